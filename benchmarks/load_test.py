"""A bounded load test on loopback: concurrent clients across two models with a budget that fits one.

Run (full form):  .venv/bin/python benchmarks/load_test.py [--clients 16] [--requests 50]
The test suite runs the same code in a small form (``tests/reliability/test_load.py``).

Each client sends its requests one after another, picking a model (``a`` or ``b``) and a kind at
random: KoboldCpp non-streamed, KoboldCpp streamed, OpenAI streamed, or a streamed request it abandons
after two events (a client that goes away). Every request must end as 200 or as a clean 503 with
``Retry-After``; anything else is counted as an error by kind. Reported: throughput, p50/p99 latency,
swaps (evictions), errors by kind, supervisor RSS before and after, and worker processes left after
the server stops.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("kobold", "kobold_stream", "openai_stream", "abandon")


@dataclass
class LoadResult:
    latencies: list[float] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.outcomes.values())


def one_request(client: httpx.Client, model: str, kind: str, max_tokens: int) -> str:
    """Send one request; return its outcome ("ok", "busy", "abandoned") or raise with what went wrong."""
    body = {"prompt": "Once upon a time", "max_length": max_tokens, "temperature": 0.7}
    if kind == "kobold":
        r = client.post(f"/m/{model}/api/v1/generate", json=body)
        return _outcome(r.status_code, r.headers, r.text)
    path = f"/m/{model}/api/extra/generate/stream" if kind != "openai_stream" else "/v1/completions"
    payload = body if kind != "openai_stream" else {"model": model, "prompt": "Once upon a time",
                                                    "max_tokens": max_tokens, "stream": True}
    with client.stream("POST", path, json=payload) as r:
        if r.status_code != 200:
            return _outcome(r.status_code, r.headers, r.read().decode(errors="replace"))
        events = 0
        for line in r.iter_lines():
            if line.startswith("data:"):
                events += 1
                if "error" in line:
                    raise RuntimeError(f"error event: {line[:200]}")
                if kind == "abandon" and events == 2:
                    return "abandoned"
    return "ok"


def _outcome(status: int, headers: httpx.Headers, text: str) -> str:
    if status == 200:
        return "ok"
    if status == 503 and headers.get("retry-after"):
        return "busy"
    raise RuntimeError(f"HTTP {status}: {text[:200]}")


def run_load(url: str, clients: int, requests: int, *, max_tokens: int = 8, seed: int = 7,
             deadline_s: float = 600.0) -> LoadResult:
    result = LoadResult()
    lock = threading.Lock()
    started = time.perf_counter()

    def client_loop(n: int) -> None:
        rng = random.Random(seed + n)
        with httpx.Client(base_url=url, timeout=120) as client:
            for _ in range(requests):
                if time.perf_counter() - started > deadline_s:
                    return
                model, kind = rng.choice("ab"), rng.choice(KINDS)
                t = time.perf_counter()
                try:
                    outcome = one_request(client, model, kind, max_tokens)
                except (RuntimeError, httpx.HTTPError) as exc:
                    outcome = f"error:{kind}"
                    with lock:
                        result.errors.append(f"{kind} {model}: {exc}")
                with lock:
                    result.outcomes[outcome] += 1
                    if outcome == "ok":
                        result.latencies.append(time.perf_counter() - t)

    threads = [threading.Thread(target=client_loop, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(deadline_s + 120)
    result.seconds = time.perf_counter() - started
    return result


def start_server(folder: Path, model: Path, port: int, budget: str = "200M") -> subprocess.Popen[bytes]:
    for name, ctx in (("a", 512), ("b", 768)):
        (folder / f"{name}.kcpps").write_text(json.dumps({"model_param": str(model), "contextsize": ctx}))
    return subprocess.Popen([sys.executable, "-m", "warren", "--nomodel", "--models-dir", str(folder),
                             "--memory-budget", budget, "--port", str(port), "--loadwait", "30"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_until_up(url: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/ping", timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"warren at {url} did not come up within {seconds:g} s")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from warren.default_model import default_model_path

    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=50)
    args = ap.parse_args()
    model = default_model_path()
    assert model is not None
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp), model, port)
        try:
            wait_until_up(url)
            sup = psutil.Process(server.pid)
            rss0 = sup.memory_info().rss
            result = run_load(url, args.clients, args.requests)
            rss1 = sup.memory_info().rss
            pool = httpx.get(f"{url}/api/pool").json()
            workers = [p.pid for p in sup.children(recursive=True)]
        finally:
            server.terminate()
            server.wait(30)
    time.sleep(2)
    left = [pid for pid in workers if psutil.pid_exists(pid)]
    evictions = sum(i["evictions"] for i in pool["instances"])
    print(f"{args.clients} clients x {args.requests} requests, two models, budget for one, "
          f"{result.seconds:.1f} s")
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| requests | {result.total} ({dict(result.outcomes)}) |")
    print(f"| throughput | {result.total / result.seconds:.1f} requests/s |")
    print(f"| latency of completed requests, p50 / p99 | {percentile(result.latencies, 0.5) * 1000:.0f} ms / "
          f"{percentile(result.latencies, 0.99) * 1000:.0f} ms |")
    print(f"| swaps (evictions) | {evictions} |")
    print(f"| errors (neither 200 nor a clean 503) | {len(result.errors)} |")
    print(f"| supervisor RSS before / after | {rss0 / 2**20:.1f} / {rss1 / 2**20:.1f} MiB |")
    print(f"| worker processes left 2 s after the server stopped | {len(left)} |")
    for line in result.errors[:10]:
        print("error:", line)


if __name__ == "__main__":
    main()
