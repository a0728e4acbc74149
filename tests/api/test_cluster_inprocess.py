"""The pool on a cluster, through its HTTP API, with fake nodes and no process (``tests/fakes/app.py``).

The in-process launcher given ``nodes`` places workers as the Ray launcher does (``tests/fakes/inprocess.py``):
it reports the nodes and their model files, starts each worker on the node the pool chose, and can lose a
node with its workers. So placement, the per-node budgets and a node that dies mid-stream are checked here
in milliseconds; ``tests/ray/`` checks the same on a real three-node Ray cluster and the real model.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.app import InProcessApp, fake_entry
from tests.fakes.inprocess import InProcessLauncher
from warren.catalog import CatalogEntry
from warren.pool.memory import MEASURE_DELAY
from warren.worker.launcher import Footprint, Node

MIB = 1 << 20
NODES = [Node("n1", 300 * MIB, address="10.0.0.1"), Node("n2", 300 * MIB, address="10.0.0.2"),
         Node("n3", 300 * MIB, address="10.0.0.3")]


def at(entry: CatalogEntry, path: str) -> CatalogEntry:
    """The entry with its model file at ``path``."""
    assert entry.settings is not None
    return dataclasses.replace(entry, settings=dataclasses.replace(entry.settings, path=Path(path)))


@contextlib.asynccontextmanager
async def cluster_app(entries: list[CatalogEntry], **launcher: Any) -> AsyncIterator[InProcessApp]:
    app = await InProcessApp.start(entries, launcher=InProcessLauncher(nodes=NODES, **launcher))
    try:
        yield app
    finally:
        await app.close()


def node_row(pool: dict[str, Any], node: str) -> dict[str, Any]:
    return next(n for n in pool["nodes"] if n["node"] == node)


async def test_models_land_on_different_nodes_when_one_node_s_budget_is_full() -> None:
    entries = [fake_entry(name, mib=200) for name in ("a", "b", "c")]
    async with cluster_app(entries) as app, app.client() as c:
        for name in ("a", "b", "c"):
            r = await c.post(f"/m/{name}/api/v1/generate", json={"prompt": "x", "max_length": 3})
            assert r.status_code == 200, r.text
        pool = (await c.get("/api/pool")).json()
        placed = {i["name"]: i["node"] for i in pool["instances"]}
        assert placed == {"a": "n1", "b": "n2", "c": "n3"}  # 200 of 300 MiB: one model per node
        assert node_row(pool, "n2") == {"node": "n2", "address": "10.0.0.2", "budget": 300 * MIB,
                                        "reserved": 200 * MIB, "threads": None, "threads_reserved": None,
                                        "models": ["b"]}
        assert pool["budget"] == 900 * MIB and pool["reserved"] == 600 * MIB
        assert all(i["nodes"] == ["n1", "n2", "n3"] for i in pool["instances"])  # each file is on every node
        # The launcher was asked for each worker on its node, holding the model's reservation there.
        assert app.launcher.starts == [("a", "n1", 200 * MIB), ("b", "n2", 200 * MIB), ("c", "n3", 200 * MIB)]
        assert not app.pool.spare.enabled and not app.pool.park_evicted  # (pool.py's docstring says why)


async def test_a_model_only_some_nodes_have_is_placed_only_there() -> None:
    entries = [at(fake_entry("here", mib=100), "/models/here.gguf"), at(fake_entry("gone", mib=100), "/lost.gguf")]
    async with cluster_app(entries, files={"n1": set(), "n2": set(), "n3": {"/models/here.gguf"}}) as app, \
            app.client() as c:
        assert (await c.post("/m/here/api/v1/generate", json={"prompt": "x", "max_length": 3})).status_code == 200
        assert app.instance("here")["node"] == "n3" and app.instance("here")["nodes"] == ["n3"]
        r = await c.post("/v1/completions", json={"model": "gone", "prompt": "x", "max_tokens": 3})
        assert r.status_code == 503
        assert r.json()["error"]["code"] == "worker_not_placed" and "none has its file" in r.json()["error"]["message"]


STREAMS = {
    "kobold": ("/m/m/api/extra/generate/stream", {"prompt": "Once", "max_length": 50}),
    "openai": ("/v1/completions", {"model": "m", "prompt": "Once", "max_tokens": 50, "stream": True}),
    "ollama": ("/api/generate", {"model": "m", "prompt": "Once", "stream": True, "options": {"num_predict": 50}}),
}
LOST = "the worker for model 'm' crashed: its node n2 left the cluster"


def last_error(dialect: str, body: str) -> Any:
    lines = [line for line in body.splitlines() if line.strip()]
    if dialect == "kobold":
        assert lines[-2] == "event: error"
        return json.loads(lines[-1][5:])
    if dialect == "openai":
        return json.loads(lines[-1][6:])
    return json.loads(lines[-1])


@pytest.mark.parametrize("dialect", STREAMS)
async def test_a_node_killed_mid_stream_gives_a_clean_error_and_the_model_comes_back_elsewhere(
        dialect: str, model_path: Path) -> None:
    # "m" names a real GGUF (its engine is still the fake one): Ollama's routes read the file's chat format.
    entries = [fake_entry("x", mib=200), at(fake_entry("m", "gated", mib=200), str(model_path))]
    async with cluster_app(entries) as app, app.client() as c:
        assert (await c.post("/m/x/api/v1/generate", json={"prompt": "x", "max_length": 3})).status_code == 200
        stream = asyncio.create_task(app.call("POST", *STREAMS[dialect]))
        worker = await app.launcher.started(2)
        worker.hold("token-1")  # before its first decode: the engine stops at its second token
        await worker.reached("token-1")
        assert worker.node == "n2"
        app.launcher.lose_node("n2")
        reply = await stream
        assert reply.status == 200  # the stream had begun: its end is an error in its dialect
        assert last_error(dialect, reply.body.decode()) == {
            "kobold": {"detail": {"msg": LOST, "type": "worker_crashed"}},
            "openai": {"error": {"message": LOST, "type": "server_error", "param": None, "code": "worker_crashed"}},
            "ollama": {"error": LOST},
        }[dialect]
        crashed = app.instance("m")
        assert crashed["state"] == "crashed" and crashed["last_exit_kind"] == "lost"
        assert crashed["memory"]["reserved"] == 0 and "quarantined" not in crashed
        assert [n["node"] for n in (await c.get("/api/pool")).json()["nodes"]] == ["n1", "n3"]
        # The next request loads it at once (no back-off: nobody's crash) on the node with room.
        r = await c.post("/m/m/api/v1/generate", json={"prompt": "x", "max_length": 3})
        assert r.status_code == 200, r.text
        back = app.instance("m")
        assert back["state"] == "ready" and back["node"] == "n3" and back["handle"] == "m@2"
        assert app.clock.jumped == [] and app.instance("x")["node"] == "n1"


async def test_a_worker_is_never_counted_below_what_its_node_holds_for_it() -> None:
    """A placing launcher's reservation is fixed for the worker's life (Ray's resources): a measurement
    below it does not free room the node does not have; the next load reserves the measurement."""
    launcher_footprint = Footprint(150 * MIB)
    async with cluster_app([fake_entry("a", mib=200)], footprint=lambda worker: launcher_footprint) as app, \
            app.client() as c, app.pool.events.subscribe() as events:
        assert (await c.post("/m/a/api/v1/generate", json={"prompt": "x", "max_length": 3})).status_code == 200
        app.clock.advance(MEASURE_DELAY)
        while (e := await events.get())["type"] != "measured":
            pass
        assert e["instance"]["memory"]["measured"] == 150 * MIB and e["instance"]["memory"]["reserved"] == 200 * MIB
        assert (await c.post("/api/models/a/unload", json={})).status_code == 200
        while (e := await events.get())["type"] != "unloaded":
            pass
        assert (await c.post("/m/a/api/v1/generate", json={"prompt": "x", "max_length": 3})).status_code == 200
        assert [reserve for _, _, reserve in app.launcher.starts] == [200 * MIB, 150 * MIB]
