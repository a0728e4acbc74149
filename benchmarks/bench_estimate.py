"""Estimate accuracy: predicted vs measured worker footprint for the default model at several contexts.

Run:  .venv/bin/python benchmarks/bench_estimate.py
Each context: a real worker loads the model, processes a 400-token prompt and generates 100 tokens;
its PSS (private + proportional shared memory, what the pool measures) is compared with the estimate
the pool reserves before starting the worker. Target: within ±15%.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from warren.default_model import default_model_path  # noqa: E402
from warren.gguf.estimate import estimate_memory  # noqa: E402
from warren.gguf.reader import read_gguf  # noqa: E402
from warren.params import GenerationParams  # noqa: E402
from warren.settings import ModelSettings  # noqa: E402
from warren.worker.handle import WorkerHandle  # noqa: E402
from warren.worker.local import measure_footprint  # noqa: E402

MIB = 2**20


async def main() -> None:
    path = default_model_path()
    assert path is not None
    info = read_gguf(path)
    idle = WorkerHandle(ModelSettings(name="idle", path=path), heartbeat=False)
    await idle.start()
    await asyncio.sleep(0.5)
    print(f"idle worker (Python + llama-cpp-python imported): {measure_footprint(idle.pid) / MIB:.1f} MiB PSS")
    await idle.stop()
    print()
    print("| context | estimate | measured PSS after load | measured PSS after 400+100 tokens | error |")
    print("|---|---|---|---|---|")
    for ctx in (512, 2048, 8192):
        h = WorkerHandle(ModelSettings(name="m", path=path, context_size=ctx), heartbeat=False)
        await h.start()
        await h.load()
        loaded = measure_footprint(h.pid)
        async for _ in h.generate(GenerationParams(prompt="word " * 400, max_tokens=100, temperature=0.0), False):
            pass
        used = measure_footprint(h.pid)
        await h.stop()
        est = estimate_memory(info, context_size=ctx).total
        print(f"| {ctx} | {est / MIB:.1f} MiB | {loaded / MIB:.1f} MiB | {used / MIB:.1f} MiB | "
              f"{(est - used) / used * 100:+.1f}% |")


if __name__ == "__main__":
    asyncio.run(main())
