"""The pool shares the cores among the workers that generate (issue 13): two models generating at once run on
disjoint cores and never more threads than the machine has; a model generating alone gets them all again.
Observed in /api/pool and in the workers' own CPU affinity, on real workers."""

from __future__ import annotations

import threading

import httpx
import psutil
import pytest

from tests.conftest import Server, Servers

BODY = {"prompt": "Once upon a time", "max_length": 400, "ban_eos_token": True, "temperature": 0}


@pytest.fixture(scope="module")
def srv(module_servers: Servers) -> Server:
    return module_servers.start("--nomodel", "--no-warm-spare", models={"a": 1024, "b": 1024})


def compute(srv: Server) -> dict[str, dict]:
    return {i["name"]: i["compute"] for i in srv.pool()["instances"] if i["compute"] is not None}


def poll(srv: Server, done, what: str):  # type: ignore[no-untyped-def]
    for _ in range(3000):  # each poll is a request: this waits on the server's state, it does not sleep
        value = compute(srv)
        if done(value):
            return value
    raise AssertionError(f"never: {what}: {compute(srv)}")


def test_two_generating_models_share_the_cores_and_one_alone_gets_them_all(srv: Server) -> None:
    cores = srv.pool()["cores"]
    if len(cores) < 2:
        pytest.skip("one core: nothing to share")
    for model in "ab":  # load both
        assert httpx.post(f"{srv.url}/m/{model}/api/v1/generate", json={"prompt": "x", "max_length": 1},
                          timeout=60).status_code == 200
    threads = [threading.Thread(target=lambda m=m: httpx.post(f"{srv.url}/m/{m}/api/v1/generate", json=BODY,
                                                               timeout=120)) for m in "ab"]
    for t in threads:
        t.start()
    pids = {i["name"]: i["pid"] for i in srv.pool()["instances"]}

    def pinned(name: str, cores: list[int]) -> bool:
        return all(sorted(psutil.Process(t.id).cpu_affinity()) == cores for t in psutil.Process(pids[name]).threads())

    # Both generate, each on its share — and each worker has applied it (it does so before its next decode
    # step): every thread of its process is pinned to the share's cores.
    both = poll(srv, lambda c: len(c) == 2 and all(x["generating"] for x in c.values())
                and all(pinned(name, x["cores"]) for name, x in c.items()), "both generate, each on its share")
    a, b = both["a"], both["b"]
    assert a["threads"] + b["threads"] <= len(cores)
    assert a["threads"] == len(a["cores"]) and b["threads"] == len(b["cores"])
    assert not set(a["cores"]) & set(b["cores"])  # disjoint
    for t in threads:
        t.join(120)
    alone = threading.Thread(target=lambda: httpx.post(f"{srv.url}/m/a/api/v1/generate", json=BODY, timeout=120))
    alone.start()
    a_alone = poll(srv, lambda c: c["a"]["generating"] and not c["b"]["generating"], "a generates alone")["a"]
    assert a_alone["threads"] == len(cores) and a_alone["cores"] == cores
    alone.join(120)
