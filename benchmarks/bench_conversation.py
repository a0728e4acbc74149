"""Conversations across a swap and at full context (issue 14): the two ratios side by side in one run.

Run:  .venv/bin/python benchmarks/bench_conversation.py   (``--swap``: the swap case alone)

1. **Swap.** A real server, two catalog entries of the default model (``a``, ``b``), ``--max-models 1``,
   ``--contextsize 4096``. A ~973-token chat on ``a``; the next turn's first token (streamed) is timed with
   no swap in between, and again after one request to ``b`` (``a`` parked with its context, then resumed);
   medians of 5 alternating rounds.
   Target: after-swap / no-swap <= 1.5 (before issue 14: ~35x).
   With the disk tier (``--kvcache-dir``): the same chat, warren stopped (its workers write their state) and
   started again; the next turn's first token with the model loaded first (``POST /api/models/a/load``: the
   state is read back as the context is made), and with the load inside the request. Target: <= 3x no-swap.
2. **Full context.** ``--contextsize 1024``, KoboldAI Lite style (memory + the newest story, 32 new tokens a
   turn): a turn whose story had to be trimmed (ContextShift) against a turn just below full that only
   extends the cache. Target: full / below-full <= 1.5 (before: 3.3x).

Each case is run once (the figures go in docs/benchmarks.md with the date and the machine).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import server  # noqa: E402

from warren.default_model import default_model_path  # noqa: E402

MEMORY = "[Memory: Tomas is an old fisherman. His daughter Ana keeps the lighthouse on the cliff.]\n"


def line(i: int) -> str:
    return (f"On day {i} Tomas rowed out to the {['north', 'south', 'east', 'west'][i % 4]} reef, met "
            f"{i % 7 + 2} gulls and caught {i + 2} silver fish before the tide turned.")


def serve(models: dict[str, int], *args: str, folder: Path | None = None) -> tuple[subprocess.Popen[bytes], str]:
    folder = folder or Path(tempfile.mkdtemp(prefix="warren-bench-"))
    model = default_model_path()
    for name, ctx in models.items():
        (folder / f"{name}.kcpps").write_text(json.dumps({"model_param": str(model), "contextsize": ctx}))
    return server.start("--nomodel", "--models-dir", str(folder), *args)


def first_token(url: str, model: str, prompt: str, max_tokens: int = 1) -> float:
    """Seconds to the first streamed token of a completion."""
    started = time.perf_counter()
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=600) as r:
        for chunk in r.iter_lines():
            if chunk.startswith("data:") and '"text"' in chunk:
                return time.perf_counter() - started
    raise SystemExit("no token")


def kobold_turn(url: str, prompt: str, memory: str, max_length: int) -> float:
    started = time.perf_counter()
    r = httpx.post(f"{url}/m/story/api/v1/generate", timeout=600,
                   json={"prompt": prompt, "memory": memory, "max_length": max_length, "max_context_length": 1024,
                         "temperature": 0, "ban_eos_token": True})
    r.raise_for_status()
    return time.perf_counter() - started


def swap_case(rounds: int = 5) -> tuple[float, float]:
    """Medians over ``rounds`` alternating rounds of (no swap, after a swap and back)."""
    proc, url = serve({"a": 4096, "b": 4096}, "--max-models", "1", "--contextsize", "4096")
    try:
        chat = MEMORY + " ".join(line(i) for i in range(36))  # ~973 tokens
        first_token(url, "a", chat, max_tokens=8)
        turn = chat + " The next morning,"
        no_swap, after_swap = [], []
        for _ in range(rounds):
            first_token(url, "a", chat, max_tokens=8)  # the cache as the chat left it
            no_swap.append(first_token(url, "a", turn))
            first_token(url, "a", chat, max_tokens=8)
            first_token(url, "b", "Hello")  # a is parked with its context (or its state)
            after_swap.append(first_token(url, "a", turn))
        return statistics.median(no_swap), statistics.median(after_swap)
    finally:
        proc.terminate()
        proc.wait()


def disk_case() -> tuple[float, float, float]:
    """(no swap, after a restart with the model loaded first, after a restart with the load in the request)."""
    folder = Path(tempfile.mkdtemp(prefix="warren-bench-"))
    kv = folder / "kv"
    args = ("--max-models", "1", "--contextsize", "4096", "--kvcache-dir", str(kv))
    chat = MEMORY + " ".join(line(i) for i in range(36))
    turn = chat + " The next morning,"
    proc, url = serve({"a": 4096, "b": 4096}, *args, folder=folder)
    try:
        first_token(url, "a", chat, max_tokens=8)
        first_token(url, "a", chat, max_tokens=8)
        no_swap = first_token(url, "a", turn)
        first_token(url, "a", chat, max_tokens=8)  # the cache as the chat left it: what the shutdown writes
    finally:
        proc.terminate()
        proc.wait()
    results = []
    for preload in (True, False):
        proc, url = serve({"a": 4096, "b": 4096}, *args, folder=folder)
        try:
            if preload:
                httpx.post(f"{url}/api/models/a/load", json={}, timeout=600).raise_for_status()
            results.append(first_token(url, "a", turn))
            first_token(url, "a", chat, max_tokens=8)  # back to the chat's cache for the next restart
        finally:
            proc.terminate()
            proc.wait()
    return no_swap, results[0], results[1]


def story_case() -> tuple[float, float]:
    proc, url = serve({"story": 1024}, "--contextsize", "1024")
    try:
        lines = [line(i) for i in range(60)]
        # Below full: ~850 tokens of story, then a turn that only adds the next line.
        kobold_turn(url, " ".join(lines[:30]), MEMORY, 32)
        below = kobold_turn(url, " ".join(lines[:31]), MEMORY, 32)
        # Full: the story over the window, trimmed by warren each turn (memory kept, oldest text cut).
        kobold_turn(url, " ".join(lines[:44]), MEMORY, 32)
        full = kobold_turn(url, " ".join(lines[:45]), MEMORY, 32)
        return below, full
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    if sys.argv[1:] == ["--swap"]:
        no_swap, after_swap = swap_case()
        print(f"swap: no swap {no_swap * 1000:.0f} ms, after {after_swap * 1000:.0f} ms: {after_swap / no_swap:.2f}x")
        return
    no_swap, after_swap = swap_case()
    disk_base, disk_loaded, disk_cold = disk_case()
    below, full = story_case()
    print(f"# {date.today()} {platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    print("| case | baseline | measured | ratio | target |")
    print("|---|---|---|---|---|")
    print(f"| 973-token chat, next turn's first token: no swap vs after a swap and back | {no_swap * 1000:.0f} ms | "
          f"{after_swap * 1000:.0f} ms | {after_swap / no_swap:.2f}x | <= 1.5x |")
    print(f"| the same chat with --kvcache-dir: no swap vs after a restart of warren, model loaded first | "
          f"{disk_base * 1000:.0f} ms | {disk_loaded * 1000:.0f} ms | {disk_loaded / disk_base:.2f}x | <= 3x |")
    print(f"| the same, the model's load inside the timed request | {disk_base * 1000:.0f} ms | "
          f"{disk_cold * 1000:.0f} ms | {disk_cold / disk_base:.2f}x | <= 3x |")
    print(f"| story turn at --contextsize 1024: just below full vs full (ContextShift) | {below * 1000:.0f} ms | "
          f"{full * 1000:.0f} ms | {full / below:.2f}x | <= 1.5x |")


if __name__ == "__main__":
    main()
