"""GGUF header reading: warren's streaming reader vs the ``gguf`` package's ``GGUFReader``.

Run:  .venv/bin/python benchmarks/bench_gguf_header.py
Validation reads a header before every start and every load, so this must stay in milliseconds.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import gguf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from warren.default_model import default_model_path  # noqa: E402
from warren.gguf.reader import read_gguf  # noqa: E402


def timed(fn, runs: int) -> float:  # type: ignore[no-untyped-def]
    samples = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1000


def main() -> None:
    path = default_model_path()
    assert path is not None
    ours = timed(lambda: read_gguf(path), 20)
    theirs = timed(lambda: gguf.GGUFReader(str(path)), 3)
    print("| reader | median ms |")
    print("|---|---|")
    print(f"| warren `read_gguf` (streaming, array bodies skipped) | {ours:.1f} |")
    print(f"| `gguf.GGUFReader` | {theirs:.1f} |")


if __name__ == "__main__":
    main()
