"""Estimate accuracy: predicted vs measured worker footprint on two architectures at several contexts.

Run:  .venv/bin/python benchmarks/bench_estimate.py [--models smollm2,gemma3]
The models: SmolLM2-135M (the default model: Llama, every layer attends to the whole context, 49k
vocabulary) and Gemma 3 270M (5 of 6 layers on a 512-token sliding window, one KV head, 262k vocabulary;
``./dev.sh test`` installs it). Each context: a real worker loads the model, processes a 400-token prompt
and generates 100 tokens; its PSS (private + proportional shared memory, what the pool measures; the model file's pages counted
whole, as if no other process mapped it) is compared with the estimate the pool reserves before starting
the worker. Target: within ±15%.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.footprint import footprint_alone  # noqa: E402
from tests.gemma import gemma_path  # noqa: E402
from warren.default_model import default_model_path  # noqa: E402
from warren.gguf.estimate import estimate_args, estimate_memory  # noqa: E402
from warren.gguf.reader import read_gguf  # noqa: E402
from warren.params import GenerationParams  # noqa: E402
from warren.settings import ModelSettings  # noqa: E402
from warren.worker.handle import WorkerHandle  # noqa: E402
from warren.worker.local import measure_footprint  # noqa: E402

MIB = 2**20
CONTEXTS = (512, 2048, 8192)
MODELS = {"smollm2": default_model_path, "gemma3": gemma_path}


async def idle_footprint(path: Path) -> int:
    idle = WorkerHandle(ModelSettings(name="idle", path=path), heartbeat=False)
    await idle.start()
    await asyncio.sleep(0.5)  # the worker has imported llama-cpp-python once it answers; let it settle
    try:
        return measure_footprint(idle.pid)
    finally:
        await idle.stop()


async def measure(name: str, path: Path) -> None:
    info = read_gguf(path)
    print(f"\n{name}: {path.name}\n")
    print("| context | estimate | measured PSS after load | measured PSS after 400+100 tokens | error |")
    print("|---|---|---|---|---|")
    for ctx in CONTEXTS:
        settings = ModelSettings(name="m", path=path, context_size=ctx)
        h = WorkerHandle(settings, heartbeat=False)
        await h.start()
        try:
            await h.load()
            loaded = footprint_alone(h.pid, path)
            async for _ in h.generate(GenerationParams(prompt="word " * 400, max_tokens=100, temperature=0.0),
                                      False):
                pass
            used = footprint_alone(h.pid, path)
        finally:
            await h.stop()
        est = estimate_memory(info, **estimate_args(settings)).total
        print(f"| {ctx} | {est / MIB:.1f} MiB | {loaded / MIB:.1f} MiB | {used / MIB:.1f} MiB | "
              f"{(est - used) / used * 100:+.1f}% |", flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    names = parser.parse_args().models.split(",")
    paths = {name: MODELS[name]() for name in names}
    missing = [name for name, path in paths.items() if path is None]
    if missing:
        sys.exit(f"not installed: {', '.join(missing)} (./dev.sh test installs both models)")
    first = next(iter(paths.values()))
    assert first is not None
    print(f"idle worker (Python + llama-cpp-python imported): {await idle_footprint(first) / MIB:.1f} MiB PSS")
    for name, path in paths.items():
        assert path is not None
        await measure(name, path)


if __name__ == "__main__":
    asyncio.run(main())
