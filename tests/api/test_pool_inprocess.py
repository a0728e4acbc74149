"""The pool through its HTTP API, with no process and no real time (``tests/fakes/app.py``).

Two catalog entries, ``a`` and ``b``, and a budget that holds one of them: every switch between them
evicts the other. Workers are in-process fakes whose measured footprint is ``FOOTPRINT``, close to the
estimate, as a real model's is; time is a fake clock, so keep-alives and deadlines pass when a test says.
A reload through the admin API runs on the real catalog of real files (``InProcessApp.from_args``), still
with fake workers. What needs a real model or a real server (hot swap under a running stream, a file
llama.cpp refuses, the events stream, admin authentication) stays in ``test_pool.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest

from tests.conftest import write_entries
from tests.fakes.app import HOST, InProcessApp, fake_entry
from tests.fakes.inprocess import InProcessLauncher
from warren.pool.memory import MEASURE_DELAY
from warren.worker.launcher import Footprint

MIB = 1 << 20
FOOTPRINT = 550 * MIB  # measured; the estimate is 600 MiB, and the budget of 1000 MiB holds one model
BODY = {"prompt": "Once upon a time", "max_length": 8, "temperature": 0}


@contextlib.asynccontextmanager
async def pool_app(**pool: Any) -> AsyncIterator[InProcessApp]:
    launcher = InProcessLauncher(footprint=lambda worker: Footprint(FOOTPRINT))
    entries = pool.pop("entries", None) or [fake_entry("a", mib=600), fake_entry("b", mib=600)]
    app = await InProcessApp.start(entries, pool.pop("budget_mib", 1000), launcher=launcher, **pool)
    try:
        yield app
    finally:
        await app.close()


async def event(queue: asyncio.Queue[dict[str, Any]], kind: str, model: str) -> dict[str, Any]:
    while (e := await queue.get())["type"] != kind or e.get("model") != model:
        pass
    return e


def oai(app: InProcessApp) -> openai.AsyncOpenAI:
    """The official client on the app itself (it brings its own httpx, ``httpx2``)."""
    transport = httpx2.ASGITransport(app=app.app, client=("127.0.0.1", 40000))
    return openai.AsyncOpenAI(base_url=f"http://{HOST}/v1", api_key="x", max_retries=0,
                              http_client=httpx2.AsyncClient(transport=transport))


async def test_catalog_lists_every_entry_with_its_state() -> None:
    async with pool_app() as app, app.client() as c:
        models = (await c.get("/v1/models")).json()["data"]
        assert {m["id"]: m["state"] for m in models} == {"a": "unloaded", "b": "unloaded"}
        a = next(i for i in (await c.get("/api/pool")).json()["instances"] if i["name"] == "a")
        assert a["memory"]["estimate"]["total"] == 600 * MIB and a["settings"]["context_size"] == 8192
        assert not app.launcher.workers  # listing loads nothing


async def test_budget_for_one_model_swaps_between_two() -> None:
    async with pool_app() as app, app.client() as c, app.pool.events.subscribe() as events:
        assert (await c.post("/m/a/api/v1/generate", json=BODY)).status_code == 200
        assert app.instance("a")["state"] == "ready" and app.instance("a")["handle"] == "a@1"
        app.clock.advance(MEASURE_DELAY)  # measured once its request is done
        await event(events, "measured", "a")
        assert app.instance("a")["memory"]["measured"] == FOOTPRINT
        assert (await c.post("/m/b/api/v1/generate", json=BODY)).status_code == 200  # evicts a
        await event(events, "unloaded", "a")
        assert app.instance("b")["state"] == "ready" and app.instance("a")["state"] == "unloaded"
        assert app.instance("a")["evictions"] == 1
        r = await oai(app).completions.create(model="a", prompt="Once upon a time", max_tokens=8, temperature=0)
        assert r.model == "a" and app.instance("a")["handle"] == "a@2"
        status = (await c.get("/api/pool")).json()
        assert status["reserved"] <= status["budget"]
        assert [i["name"] for i in status["instances"] if i["state"] == "ready"] == ["a"]


async def test_handles_are_stable_and_a_gone_handle_is_410() -> None:
    async with pool_app() as app, app.client() as c:
        loaded = (await c.post("/api/models/a/load", json={})).json()
        assert loaded["handle"] == "a@1" and loaded["state"] == "ready"
        assert set(loaded["memory"]) == {"estimate", "measured", "gpu", "reserved", "kv_state", "kv_kept"}
        assert loaded["memory"]["gpu"] is None  # the launcher reports no GPU memory
        assert (await c.post("/m/a@1/api/v1/generate", json=BODY)).status_code == 200
        assert (await c.post("/api/models/b/load", json={})).status_code == 200  # evicts a@1
        gone = await c.post("/m/a@1/api/v1/generate", json=BODY)
        assert gone.status_code == 410 and "handle a@1 is gone" in gone.json()["detail"]["msg"]
        with pytest.raises(openai.APIStatusError) as info:
            await oai(app).completions.create(model="a@1", prompt="x", max_tokens=1)
        assert info.value.status_code == 410


async def test_pinned_model_is_not_evicted_and_the_other_gets_a_503() -> None:
    async with pool_app(wait_seconds=1.0) as app, app.client() as c, app.pool.events.subscribe() as events:
        assert (await c.post("/api/models/a/load", json={"pin": True})).json()["pinned"] is True
        request = asyncio.create_task(c.post("/m/b/api/v1/generate", json=BODY))
        await event(events, "waiting", "b")
        app.clock.advance(1.0)  # --loadwait 1: the tick refuses it
        r = await request
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "no room to load model 'b'" in r.json()["detail"]["msg"]
        assert app.instance("a")["state"] == "ready"
        assert (await c.post("/api/models/a/unload")).json()["unloading"] is True
        assert (await c.post("/m/b/api/v1/generate", json=BODY)).status_code == 200


async def test_a_busy_model_is_not_evicted_the_new_one_waits() -> None:
    async with pool_app() as app, app.client() as c, app.pool.events.subscribe() as events:
        busy = await app.pool.acquire("a")  # a request on a, running
        await busy.ready()
        request = asyncio.create_task(c.post("/m/b/api/v1/generate", json=BODY))
        await event(events, "waiting", "b")
        assert app.instance("a")["state"] == "ready" and app.instance("a")["in_flight"] == 1
        busy.release()  # a is idle: now it is evicted for b
        assert (await request).status_code == 200
        assert app.instance("a")["evictions"] == 1 and app.instance("b")["state"] == "ready"


async def test_a_client_that_left_while_waiting_for_room_gets_nothing_evicted_or_loaded() -> None:
    """Issue 11 item 6: b waits for a's room, and its client leaves; once a is idle, the policy must not
    evict it and load b for nobody."""
    async with pool_app() as app, app.pool.events.subscribe() as events:
        busy = await app.pool.acquire("a")
        await busy.ready()
        gone = asyncio.Event()
        request = asyncio.create_task(app.call("POST", "/m/b/api/v1/generate", BODY, gone=gone))
        await event(events, "waiting", "b")
        gone.set()  # the client closes its connection
        await request
        assert not app.pool.policy.waiting  # the policy forgot the waiter
        busy.release()
        assert app.instance("a")["state"] == "ready" and app.instance("a")["evictions"] == 0
        assert app.instance("b")["state"] == "unloaded" and len(app.launcher.workers) == 1


async def test_keep_alive_unloads_idle_models() -> None:
    async with pool_app(keep_alive=1.0) as app, app.client() as c, app.pool.events.subscribe() as events:
        assert (await c.post("/m/a/api/v1/generate", json=BODY)).status_code == 200
        worker = app.launcher.workers[0]
        app.clock.advance(1.0)
        await event(events, "unloaded", "a")
        assert app.instance("a")["state"] == "unloaded" and worker.returncode == 0  # its worker ended
        assert "keep-alive expired" in app.instance("a")["last_exit"]


async def test_model_larger_than_the_budget_is_refused_with_both_numbers() -> None:
    async with pool_app(entries=[fake_entry("a", mib=170)], budget_mib=100) as app, app.client() as c:
        r = await c.post("/m/a/api/v1/generate", json=BODY)
        assert r.status_code == 507
        msg = r.json()["detail"]["msg"]
        assert "needs about 170 MiB" in msg and "memory budget of 100 MiB" in msg
        assert not app.launcher.workers


async def test_delete_instance_by_handle() -> None:
    async with pool_app() as app, app.client() as c, app.pool.events.subscribe() as events:
        await c.post("/api/models/a/load", json={})
        assert (await c.delete("/api/instances/a@1")).json()["unloading"] is True
        await event(events, "unloaded", "a")
        assert app.instance("a")["state"] == "unloaded"
        assert (await c.delete("/api/instances/a@1")).status_code == 410


async def test_metrics() -> None:
    async with pool_app() as app, app.client() as c:
        await c.post("/m/a/api/v1/generate", json=BODY)
        text = (await c.get("/metrics")).text
        assert 'warren_model_state{model="a",state="ready"} 1' in text
        assert 'warren_model_state{model="b",state="unloaded"} 1' in text
        assert 'warren_model_requests_total{model="a"} 1' in text
        assert 'warren_model_loads_total{model="a"} 1' in text
        assert f"warren_memory_budget_bytes {1000 * MIB}" in text


async def test_a_failed_reload_changes_nothing_and_an_override_is_its_own_entry(tmp_path: Path,
                                                                                  model_path: Path) -> None:
    """Issue 11, item 7: a bad ``overrideconfig`` used to replace the active model's entry, and every request
    got 502 until the next rescan. Now nothing changes; a good override is loaded as ``MODEL~CONFIG``. The
    real catalog of real files, served by fake workers: the rescans are called, not waited for."""
    admindir = tmp_path / "admin"
    admindir.mkdir()
    local = admindir / "model.gguf"
    try:
        os.link(model_path, local)
    except OSError:  # another file system: a copy will do
        local.write_bytes(model_path.read_bytes())
    (admindir / "bad.kcpps").write_text(json.dumps({"contextsize": 100}))
    (admindir / "good.kcpps").write_text(json.dumps({"contextsize": 1024}))
    app = await InProcessApp.from_args(["--model", str(local), "--contextsize", "512", "--admin", "--admindir",
                                        str(admindir), "--no-warm-spare"])
    try:
        async with app.client() as c:
            failed = (await c.post("/api/admin/reload_config",
                                   json={"filename": "model.gguf", "overrideconfig": "bad.kcpps"})).json()
            assert failed["success"] is False and "--contextsize 100" in failed["error"]
            assert failed["active"] == "model"
            assert (await c.post("/api/v1/generate", json=BODY)).status_code == 200
            app.pool.catalog.refresh()  # the rescan (every fifth tick) that used to end the 502s
            assert (await c.post("/api/v1/generate", json=BODY)).status_code == 200
            assert app.instance("model")["context_size"] == 512
            swap = (await c.post("/api/admin/reload_config",
                                 json={"filename": "model.gguf", "overrideconfig": "good.kcpps"})).json()
            assert swap["success"] is True and swap["active"] == "model~good"
            assert (await c.get("/api/extra/true_max_context_length")).json() == {"value": 1024}
            assert app.instance("model~good")["state"] == "ready"
            app.pool.catalog.refresh()  # the override entry survives the catalog's rescans
            assert (await c.get("/api/v1/model")).json() == {"result": "koboldcpp/model~good"}
            assert (await c.post("/api/v1/generate", json=BODY)).status_code == 200
    finally:
        await app.close()


async def test_reload_config_hot_swaps_without_dropping_the_server(tmp_path: Path, model_path: Path) -> None:
    """``a`` and ``b`` are .kcpps files on the real model (real estimates, ~170 MiB each) under a 200 MiB
    budget: the swap to ``b`` must wait for the stream running on ``a``, held at its second token until
    the swap is seen waiting, then evict it."""
    admindir = write_entries(tmp_path, model_path, {"a": 512, "b": 768})
    app = await InProcessApp.from_args(["--nomodel", "--admin", "--admindir", str(admindir), "--memory-budget",
                                        "200M", "--no-warm-spare"], engine="tests.fakes.fake_engine:gated")
    try:
        async with app.client() as c, app.pool.events.subscribe() as events:
            assert (await c.get("/api/admin/list_options")).json() == ["a.kcpps", "b.kcpps", "unload_model"]
            assert (await c.get("/api/v1/model")).json() == {"result": "koboldcpp/inactive"}
            assert (await c.post("/api/admin/reload_config", json={"filename": "a.kcpps"})).json()["success"] is True
            assert (await c.get("/api/v1/model")).json() == {"result": "koboldcpp/a"}
            assert (await c.post("/api/v1/generate", json=BODY)).status_code == 200
            # Swap while a stream runs on the old model: the stream finishes, then the new model takes over.
            worker = app.launcher.workers[0]
            worker.hold("token-1")
            stream = asyncio.create_task(app.call("POST", "/api/extra/generate/stream",
                                                  {**BODY, "max_length": 60, "ban_eos_token": True}))
            await worker.reached("token-1")
            swap = asyncio.create_task(c.post("/api/admin/reload_config", json={"filename": "b.kcpps"}))
            await event(events, "waiting", "b")
            assert app.instance("a")["in_flight"] == 1 and app.pool.active_name == "b"
            worker.open("token-1")
            chunks = [line for line in (await stream).body.decode().splitlines() if line.startswith("data:")]
            assert json.loads(chunks[-1][5:])["finish_reason"] == "length" and len(chunks) == 61
            assert (await swap).json()["success"] is True and (await swap).json()["active"] == "b"
            assert app.instance("a")["evictions"] == 1
            assert (await c.get("/api/v1/model")).json() == {"result": "koboldcpp/b"}
            assert (await c.post("/api/v1/generate", json=BODY)).status_code == 200
            # A failed swap leaves the previous model active and says why.
            failed = (await c.post("/api/admin/reload_config", json={"filename": "nope.gguf"})).json()
            assert failed["success"] is False and "not a model file" in failed["error"] and failed["active"] == "b"
            unloaded = await c.post("/api/admin/reload_config", json={"filename": "unload_model"})
            assert unloaded.json()["success"] is True
            assert (await c.get("/api/v1/model")).json() == {"result": "koboldcpp/inactive"}
    finally:
        await app.close()
