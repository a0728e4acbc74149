"""Parking: what a parked worker keeps, what resuming costs, and whether park/resume cycles leak.

Run:  .venv/bin/python benchmarks/bench_park.py [--cycles 100]

One real worker (the default model at context 2048) is loaded, generates one token, and is then parked
and resumed ``--cycles`` times through the worker protocol (``Park``, then ``Load`` again). Recorded:
the worker's PSS loaded and parked, the time of each resume (``Load`` → ``Ready``) and of the first
token after it, and how the loaded and parked footprints move over the cycles (a leak would grow them).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from warren.default_model import default_model_path  # noqa: E402
from warren.params import GenerationParams  # noqa: E402
from warren.settings import ModelSettings  # noqa: E402
from warren.worker.handle import WorkerHandle  # noqa: E402

MIB = 2**20
PROMPT = GenerationParams(prompt="Once upon a time", max_tokens=1, temperature=0)


def pss(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Pss:"))


async def one_token(handle: WorkerHandle) -> float:
    started = time.perf_counter()
    async for _ in handle.generate(PROMPT, stream=True):
        pass
    return time.perf_counter() - started


async def run(cycles: int) -> None:
    model = default_model_path()
    assert model is not None
    handle = WorkerHandle(ModelSettings(name="smol", path=model, context_size=2048), heartbeat=False)
    await handle.start()
    try:
        await handle.load()
        await one_token(handle)
        loaded, parked, resumes, firsts = [pss(handle.pid)], [], [], []
        for _ in range(cycles):
            await handle.park()
            parked.append(pss(handle.pid))
            started = time.perf_counter()
            await handle.load()
            resumes.append(time.perf_counter() - started)
            firsts.append(await one_token(handle))
            loaded.append(pss(handle.pid))
    finally:
        await handle.stop()
    print(f"### {date.today().isoformat()} — {psutil.cpu_count()} cores; SmolLM2-135M-Instruct Q4_1, context 2048, "
          f"{cycles} park/resume cycles")
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| worker PSS loaded (after one token) | {loaded[0] / MIB:.0f} MiB |")
    print(f"| worker PSS parked | {statistics.median(parked) / MIB:.0f} MiB |")
    print(f"| resume (`Load` → `Ready`), median | {statistics.median(resumes) * 1000:.0f} ms |")
    print(f"| first token after a resume (4-token prompt), median | {statistics.median(firsts) * 1000:.0f} ms |")
    print(f"| loaded PSS, last cycle minus first | {(loaded[-1] - loaded[0]) / MIB:+.1f} MiB |")
    print(f"| parked PSS, last cycle minus first | {(parked[-1] - parked[0]) / MIB:+.1f} MiB |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=100)
    asyncio.run(run(ap.parse_args().cycles))


if __name__ == "__main__":
    main()
