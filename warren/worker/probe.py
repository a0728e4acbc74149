"""The engine probe: import the engine, load a model at a small context, decode a few tokens, report.

Run in a subprocess by ``warren/engine_check.py`` (``python -m warren.worker.probe --model PATH``), never
in the supervisor: an engine built for another CPU dies here with SIGILL, and that must end this process,
not the caller. Each step prints one JSON line to stdout *before* it starts (``{"phase": ...}``), so
whoever reads the output knows where a process that died by a signal was; the last line is the report.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from warren.params import GenerationParams
from warren.settings import ModelSettings
from warren.worker.child import load_engine

PROMPT = "Once upon a time"


def _say(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m warren.worker.probe")
    parser.add_argument("--engine", default="llama")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--tokens", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    _say(phase="importing the engine")
    engine = load_engine(args.engine)
    build = engine.build_info() if hasattr(engine, "build_info") else {}
    _say(phase="engine imported", build=build)
    if args.model is None:
        _say(ok=True, build=build, decoded=0)
        return 0
    _say(phase=f"loading {args.model.name}")
    settings = ModelSettings(name="probe", path=args.model, context_size=256, threads=args.threads,
                             batch_threads=args.threads, batch_size=64, engine=args.engine)
    engine.load(settings, lambda _fraction: None)
    _say(phase="decoding")
    started = time.perf_counter()
    result = engine.generate(GenerationParams(prompt=PROMPT, max_tokens=args.tokens, temperature=0.0, ban_eos=True),
                             None, lambda: False)
    seconds = time.perf_counter() - started
    _say(ok=True, build=build, decoded=result.completion_tokens, text=result.text, seconds=round(seconds, 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
