"""Pool benchmarks: swap latency and memory reclaim, side by side with llama-cpp-python in-process.

Run:  .venv/bin/python benchmarks/bench_pool.py [--swaps 20] [--cycles 100]

1. Swap latency. Two catalog entries (``a`` and ``b``: the default model at context 2048) and a memory
   budget that fits one loaded model. Requests alternate between them, so each one evicts the other
   model and brings its own back: the time from sending a streamed 1-token request to its first token.
   Measured twice: as warren runs by default (the evicted model is parked, and coming back needs a new
   context only) and with ``--no-park`` (the evicted worker is stopped and the model loaded anew into
   the warm spare). Compared with the same swap done in-process by llama-cpp-python (``del`` the old
   ``Llama``, create the new one, evaluate the prompt, sample a token), whose RSS growth over the swaps
   is recorded too.
2. Reclaim. 100 load/unload cycles through the pool API: the supervisor's RSS growth, worker processes
   left behind, and the machine's available memory before and after. Compared with 100 in-process
   ``Llama()`` create/free cycles.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import server  # noqa: E402

from warren.default_model import default_model_path  # noqa: E402

CTX = 2048
MIB = 2**20


def start(folder: Path, *extra: str) -> tuple[subprocess.Popen[bytes], str]:
    return server.start("--nomodel", "--admin", "--admindir", str(folder), "--memory-budget", "300M", *extra)


def first_token(client: httpx.Client, model: str) -> float:
    started = time.perf_counter()
    with client.stream("POST", f"/m/{model}/api/extra/generate/stream",
                       json={"prompt": "Once upon a time", "max_length": 1, "temperature": 0}) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                return time.perf_counter() - started
    raise RuntimeError("no token")


def warren_swaps(url: str, swaps: int, pause: float) -> list[float]:
    client = httpx.Client(base_url=url, timeout=60)
    first_token(client, "a")
    time.sleep(pause)  # the first swap too comes after a user's pause, not right behind the warm-up
    times = []
    for i in range(swaps):
        times.append(first_token(client, "b" if i % 2 == 0 else "a"))
        time.sleep(pause)  # requests from users, not a tight loop: the warm spare has time to start
    return times


def inprocess_swaps(model: Path, swaps: int) -> tuple[list[float], float]:
    import llama_cpp

    proc = psutil.Process()
    llm = llama_cpp.Llama(str(model), n_ctx=CTX, verbose=False)
    llm.create_completion("Once upon a time", max_tokens=1, temperature=0)
    gc.collect()
    rss0 = proc.memory_info().rss
    times = []
    for _ in range(swaps):
        started = time.perf_counter()
        del llm
        llm = llama_cpp.Llama(str(model), n_ctx=CTX, verbose=False)
        llm.create_completion("Once upon a time", max_tokens=1, temperature=0)
        times.append(time.perf_counter() - started)
    gc.collect()
    growth = proc.memory_info().rss - rss0
    del llm
    return times, growth


SETTLE_SECONDS = 10.0


def available_memory() -> int:
    """The machine's available memory, settled: the median of five readings a quarter second apart, taken
    after ``SETTLE_SECONDS``. This VM hands freed memory back to its host in the background (free page
    reporting), and while it does the freed pages are missing from "available": after a worker exits,
    the figure comes back over several seconds, not at once."""
    time.sleep(SETTLE_SECONDS)
    readings = []
    for _ in range(5):
        time.sleep(0.25)
        readings.append(psutil.virtual_memory().available)
    return int(statistics.median(readings))


def footprints(url: str) -> dict[str, int]:
    """Per state, the bytes the pool counts for the instances in it (measured PSS once measured)."""
    time.sleep(1.0)  # the first measurement of a newly parked or loaded worker comes a moment later
    out: dict[str, int] = {}
    for i in httpx.get(f"{url}/api/pool", timeout=10).json()["instances"]:
        out[i["state"]] = i["memory"]["reserved"]
    return out


def warren_reclaim(url: str, server_pid: int, cycles: int) -> dict[str, float]:
    client = httpx.Client(base_url=url, timeout=60)
    for name in ("a", "b"):
        client.post(f"/api/models/{name}/unload")  # an explicit unload stops a parked model too
    client.post("/api/models/a/load", json={})
    client.post("/api/models/a/unload")
    time.sleep(1.0)
    sup = psutil.Process(server_pid)
    rss0, avail0 = sup.memory_info().rss, available_memory()
    for _ in range(cycles):
        assert client.post("/api/models/a/load", json={}).status_code == 200
        client.post("/api/models/a/unload")
        for _ in range(200):
            if next(i for i in client.get("/api/pool").json()["instances"] if i["name"] == "a")["pid"] is None:
                break
            time.sleep(0.01)
    time.sleep(1.0)
    pool = client.get("/api/pool").json()
    loaded = [i["name"] for i in pool["instances"] if i["pid"] is not None]
    children = sup.children(recursive=True)
    return {"rss_growth": sup.memory_info().rss - rss0, "avail_change": available_memory() - avail0,
            "loaded_after": len(loaded), "child_processes_after": len(children)}


def inprocess_reclaim(model: Path, cycles: int) -> tuple[float, float]:
    """(RSS growth, change in available memory) over in-process create/free cycles."""
    import llama_cpp

    proc = psutil.Process()
    llm = llama_cpp.Llama(str(model), n_ctx=CTX, verbose=False)
    del llm
    gc.collect()
    rss0, avail0 = proc.memory_info().rss, available_memory()
    for _ in range(cycles):
        llm = llama_cpp.Llama(str(model), n_ctx=CTX, verbose=False)
        del llm
    gc.collect()
    return proc.memory_info().rss - rss0, available_memory() - avail0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--swaps", type=int, default=20)
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--pause", type=float, default=0.5, help="seconds between swap requests")
    args = ap.parse_args()
    model = default_model_path()
    assert model is not None
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in ("a", "b"):
            (folder / f"{name}.kcpps").write_text(json.dumps({"model_param": str(model), "contextsize": CTX}))
        proc, url = start(folder, "--no-park")
        try:
            cold_times = warren_swaps(url, args.swaps, args.pause)
        finally:
            proc.terminate()
            proc.wait(20)
        proc, url = start(folder)
        try:
            swap_times = warren_swaps(url, args.swaps, args.pause)
            sizes = footprints(url)
            reclaim = warren_reclaim(url, proc.pid, args.cycles)
        finally:
            proc.terminate()
            proc.wait(20)
    local_swaps, local_growth = inprocess_swaps(model, args.swaps)
    local_reclaim, local_avail = inprocess_reclaim(model, args.cycles)

    print(f"### {date.today().isoformat()} — {psutil.cpu_count()} cores, "
          f"{psutil.virtual_memory().total / 2**30:.0f} GiB; SmolLM2-135M-Instruct Q4_1, context {CTX}")
    print()
    print("| measure | warren | llama-cpp-python in-process | target |")
    print("|---|---|---|---|")
    print(f"| swap to the other model, request to first token (median of {args.swaps}, {args.pause:g} s apart) | "
          f"{statistics.median(swap_times) * 1000:.0f} ms | {statistics.median(local_swaps) * 1000:.0f} ms | "
          "≤ 150 ms |")
    print(f"| swap, slowest of {args.swaps} | {max(swap_times) * 1000:.0f} ms | {max(local_swaps) * 1000:.0f} ms | |")
    print(f"| swap with `--no-park` (evicted worker stopped, model loaded into the warm spare), median | "
          f"{statistics.median(cold_times) * 1000:.0f} ms | | |")
    print(f"| memory the pool counts after the swaps: the loaded model / the parked one | "
          f"{sizes.get('ready', 0) / MIB:.0f} MiB / {sizes.get('parked', 0) / MIB:.0f} MiB | | budget 300 MiB |")
    print(f"| RSS growth of the serving process over the {args.swaps} swaps | (workers end: 0 by design) | "
          f"{local_growth / MIB:+.1f} MiB | |")
    print(f"| {args.cycles} load/unload cycles: RSS growth of the serving process | "
          f"{reclaim['rss_growth'] / MIB:+.1f} MiB | {local_reclaim / MIB:+.1f} MiB | < 2 MiB |")
    print(f"| models still loaded / child processes after the cycles | {reclaim['loaded_after']} / "
          f"{reclaim['child_processes_after']} (the warm spare) | — | 0 models |")
    print(f"| change in the machine's available memory across the cycles | "
          f"{reclaim['avail_change'] / MIB:+.1f} MiB | {local_avail / MIB:+.1f} MiB | ≈ 0 |")
    print()
    print("raw:", json.dumps({"warren_swaps_s": swap_times, "warren_no_park_swaps_s": cold_times,
                              "inprocess_swaps_s": local_swaps}, separators=(",", ":")))


if __name__ == "__main__":
    main()
