"""The Ray launcher on a real three-node Ray cluster (``tests/ray/cluster.py``) with the real default model.

What the in-process fake checks in milliseconds (``tests/api/test_cluster_inprocess.py``) is checked here
with Ray placing real workers: models spread over the nodes' budgets, and a node killed mid-stream ends
the stream with an error in its dialect and the model comes back on a node that is left. Each test runs
its own server (``warren --cluster``), so it starts with every node empty.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from typing import Any

import httpx
import psutil
import pytest
from ray.cluster_utils import Cluster

from tests.conftest import Server, Servers
from tests.ray.cluster import NODE_TIMEOUT, kill_node, worker_node_ids
from tests.ray.conftest import BUDGET_MIB

pytestmark = [pytest.mark.model, pytest.mark.ray, pytest.mark.timeout(600)]

MIB = 1 << 20
CONTEXT = 2048  # SmolLM2's estimate at 2,048 tokens (~208 MiB) fills a node's 300 MiB: one model a node
NO_END = {"0": -100, "2": -100, "4": -100}  # SmolLM2's end-of-generation tokens banned: it runs its length


def start(servers: Servers, cluster: Cluster, models: dict[str, int]) -> Server:
    """A server on the cluster, once it has surveyed the cluster's nodes (it serves before that)."""
    srv = servers.start("--nomodel", "--cluster", cluster.address, "--keepalive", "-1", models=models)
    deadline = time.monotonic() + NODE_TIMEOUT
    while len(pool(srv).get("nodes", [])) < len(cluster.list_all_nodes()):
        assert time.monotonic() < deadline, f"the server never saw the cluster's nodes:\n{srv.log()}"
        time.sleep(0.2)  # (polling a state, not waiting for a time)
    return srv


def pool(srv: Server) -> dict[str, Any]:
    return httpx.get(f"{srv.url}/api/pool", timeout=30).json()


def instance(srv: Server, name: str) -> dict[str, Any]:
    return next(i for i in pool(srv)["instances"] if i["name"] == name)


def generate(srv: Server, model: str) -> httpx.Response:
    return httpx.post(f"{srv.url}/m/{model}/api/v1/generate", json={"prompt": "Hi", "max_length": 3}, timeout=300)


def test_models_land_on_different_nodes_when_a_node_s_budget_is_full(servers: Servers, cluster: Cluster) -> None:
    srv = start(servers, cluster, {"alpha": CONTEXT, "beta": CONTEXT, "gamma": CONTEXT})
    nodes = {n["node"] for n in pool(srv)["nodes"]}
    assert len(nodes) == 3 and all(n["budget"] == BUDGET_MIB * MIB for n in pool(srv)["nodes"])
    for name in ("alpha", "beta", "gamma"):
        r = generate(srv, name)
        assert r.status_code == 200, r.text
    status = pool(srv)
    placed = {i["name"]: i["node"] for i in status["instances"]}
    assert set(placed.values()) == nodes  # one model a node: none had room for a second
    for row in status["nodes"]:
        assert len(row["models"]) == 1 and BUDGET_MIB * MIB / 2 < row["reserved"] <= row["budget"]
    assert all(i["state"] == "ready" and i["pid"] for i in status["instances"])


STREAMS = {
    "kobold": ("api/extra/generate/stream", {"prompt": "Once upon a time", "max_length": 1500,
                                              "temperature": 0, "logit_bias": NO_END}),
    "openai": ("v1/completions", {"model": "{model}", "prompt": "Once upon a time", "max_tokens": 1500,
                                  "temperature": 0, "stream": True, "logit_bias": NO_END}),
}


def last_error(dialect: str, lines: list[str]) -> Any:
    """The error event that ends a stream, in the dialect's own shape."""
    lines = [line for line in lines if line.strip()]
    if dialect == "kobold":
        assert lines[-2] == "event: error", lines[-4:]
        return json.loads(lines[-1][5:])
    assert lines[-1].startswith("data: {"), lines[-4:]
    return json.loads(lines[-1][6:])


@pytest.mark.parametrize("dialect", STREAMS)
def test_a_node_killed_mid_stream_ends_the_stream_cleanly_and_the_model_comes_back_elsewhere(
        servers: Servers, cluster: Cluster, dialect: str) -> None:
    srv = start(servers, cluster, {"x": CONTEXT, "m": CONTEXT})
    for name in ("x", "m"):
        assert generate(srv, name).status_code == 200
    placed = {i["name"]: i["node"] for i in pool(srv)["instances"]}
    assert placed["x"] != placed["m"]
    # Two nodes hold the two models; at least one is not the head (which holds the cluster: not killed).
    victim = "m" if placed["m"] in worker_node_ids(cluster) else "x"
    node = placed[victim]
    assert node in worker_node_ids(cluster)
    path, body = STREAMS[dialect]
    body = {k: v.format(model=victim) if isinstance(v, str) else v for k, v in body.items()}
    lines: list[str] = []
    first_token = threading.Event()

    def read() -> None:
        with httpx.stream("POST", f"{srv.url}/m/{victim}/{path}", json=body, timeout=300) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                lines.append(line)
                if line.startswith("data: {"):
                    first_token.set()

    reader = threading.Thread(target=read)
    reader.start()
    assert first_token.wait(120), "the stream never started"
    kill_node(cluster, node)
    reader.join(NODE_TIMEOUT)
    assert not reader.is_alive(), "the stream did not end when its node was killed"
    message = f"the worker for model {victim!r} crashed: its node {node} left the cluster"
    assert last_error(dialect, lines) == {
        "kobold": {"detail": {"msg": message, "type": "worker_crashed"}},
        "openai": {"error": {"message": message, "type": "server_error", "param": None, "code": "worker_crashed"}},
    }[dialect]
    lost = instance(srv, victim)
    assert lost["state"] == "crashed" and lost["last_exit_kind"] == "lost" and lost["memory"]["reserved"] == 0
    assert "quarantined" not in lost and node not in {n["node"] for n in pool(srv)["nodes"]}
    # The next request loads it at once on the node that is left with room (the third one).
    r = generate(srv, victim)
    assert r.status_code == 200, r.text
    back = instance(srv, victim)
    other = "x" if victim == "m" else "m"
    assert back["state"] == "ready" and back["handle"] == f"{victim}@2"
    assert back["node"] not in (node, instance(srv, other)["node"])
    assert instance(srv, other)["state"] == "ready"  # the other model, on its own node, never noticed



def test_the_supervisor_dying_leaves_no_actor_or_worker_behind(servers: Servers, cluster: Cluster) -> None:
    """The agents are owned by the supervisor (a Ray driver): when it dies, Ray ends them, and their
    workers with them (their parent's death, ``PR_SET_PDEATHSIG``; and their channel's EOF)."""
    srv = start(servers, cluster, {"alpha": CONTEXT})
    assert generate(srv, "alpha").status_code == 200
    worker = psutil.Process(instance(srv, "alpha")["pid"])  # the nodes run on this machine: pids are ours to see
    agent = worker.parent()
    assert agent is not None and "warren.worker.child" in " ".join(worker.cmdline())
    srv.process.send_signal(signal.SIGKILL)
    srv.process.wait(30)
    _, alive = psutil.wait_procs([worker, agent], timeout=NODE_TIMEOUT)
    assert alive == [], f"still running after the supervisor died: {alive}"
