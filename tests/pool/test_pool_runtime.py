"""The pool carrying out its decisions on real worker processes (fake engines: fast, and able to crash)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from warren.catalog import Catalog, CatalogEntry
from warren.errors import HandleGone, Quarantined, RequestRefused, WorkerCrashed
from warren.gguf.estimate import MemoryEstimate
from warren.params import GenerationParams, GenerationResult
from warren.pool import pool as pool_module
from warren.pool.pool import Pool
from warren.pool.retry import start_generation
from warren.settings import ModelSettings, ServerSettings
from warren.worker.handle import WorkerHandle

MIB = 1 << 20


class FixedCatalog(Catalog):
    """A catalog of given entries (fake engines), which rescans leave as they are."""

    def __init__(self, entries: list[CatalogEntry]) -> None:
        super().__init__({})
        self.entries = {e.name: e for e in entries}

    def refresh(self) -> None:
        pass


def entry(name: str, engine: str, mib: int = 100, **knobs: object) -> CatalogEntry:
    settings = ModelSettings(name=name, path=Path("/dev/null"), engine=f"tests.fakes.fake_engine:{engine}")
    estimate = MemoryEstimate(weights=mib * MIB, kv_cache=0, compute=0, worker_base=0)
    return CatalogEntry(name, "test", Path("/dev/null"), settings, estimate, "", (name, engine), **knobs)  # type: ignore[arg-type]


@pytest.fixture
async def make_pool() -> AsyncIterator:  # type: ignore[type-arg]
    pools: list[Pool] = []

    async def make(entries: list[CatalogEntry], budget_mib: int = 1000, **kw: object) -> Pool:
        pool = Pool(ServerSettings(), FixedCatalog(entries), budget=budget_mib * MIB, warm_spare=False, **kw)  # type: ignore[arg-type]
        await pool.start(preload=False)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


async def started_spare(pool: Pool) -> WorkerHandle:
    """Start the pool (nothing preloaded) and wait for its warm spare (``SPARE_DELAY`` patched to 0)."""
    await pool.start(preload=False)
    pool._ensure_spare()
    assert pool._spare_task is not None
    await pool._spare_task
    spare = pool._spare
    assert spare is not None and spare.alive
    return spare


async def generate(pool: Pool, name: str, n: int = 5) -> str:
    async with await pool.acquire(name) as instance:
        return (await instance.complete(GenerationParams(prompt="x", max_tokens=n))).text


async def wait_for_crashes(pool: Pool, name: str, n: int) -> dict:  # type: ignore[type-arg]
    import asyncio

    for _ in range(400):
        status = pool.describe(name)
        if status["crashes"] >= n and status["state"] == "crashed":
            return status
        await asyncio.sleep(0.01)
    raise AssertionError(f"{name} did not crash {n} times: {pool.describe(name)}")


async def test_a_model_that_crashes_by_itself_restarts_with_backoff_then_is_quarantined(  # type: ignore[no-untyped-def]
        make_pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Quarantine is for models that fail without a hostile request: this one dies while idle."""
    monkeypatch.setattr(pool_module, "BACKOFF_BASE", 0.01)
    pool = await make_pool([entry("crashy", "crash_after_ready")])
    for attempt in range(pool_module.CRASH_LOOP_LIMIT):
        async with await pool.acquire("crashy"):
            pass
        status = await wait_for_crashes(pool, "crashy", attempt + 1)
        assert status["last_exit_kind"] == "crashed" and "killed by SIGSEGV" in status["last_exit"]
    with pytest.raises(Quarantined, match="crashed 4 times"):
        await generate(pool, "crashy", 10)
    assert pool.describe("crashy")["state"] == "crashed"
    assert pool.policy.reserved == 0  # nothing of it is counted any more
    # An operator's explicit load lifts the quarantine (and it crashes again, which is honest).
    instance = await pool.load("crashy")
    assert instance.generation == pool_module.CRASH_LOOP_LIMIT + 1


async def test_a_crash_during_a_request_is_charged_to_it_not_to_the_model(make_pool) -> None:  # type: ignore[no-untyped-def]
    """Requests that crash the worker (llama.cpp aborting on what they asked for) never quarantine the
    model, however many; each is refused when it comes again, and other requests are served."""
    pool = await make_pool([entry("m", "crash_on_marker")])
    for i in range(pool_module.CRASH_LOOP_LIMIT + 2):
        with pytest.raises(WorkerCrashed, match="SIGABRT"):
            await generate_params(pool, "m", GenerationParams(prompt=f"CRASH {i}", max_tokens=3))
    assert await generate(pool, "m", 3) == " t0 t1 t2"  # not quarantined
    pid = pool.describe("m")["pid"]
    with pytest.raises(RequestRefused, match="this request crashed the worker of model 'm' before .*SIGABRT"):
        await generate_params(pool, "m", GenerationParams(prompt="CRASH 0", max_tokens=3, seed=99))
    assert pool.describe("m")["pid"] == pid  # refused before it reached the worker
    # A grammar that crashed it is refused whatever the prompt: its constraint fingerprint matches.
    with pytest.raises(WorkerCrashed):
        await generate_params(pool, "m", GenerationParams(prompt="x", grammar='root ::= "CRASH"', max_tokens=3))
    with pytest.raises(RequestRefused):
        await generate_params(pool, "m", GenerationParams(prompt="y", grammar='root ::= "CRASH"', max_tokens=3))
    status = pool.describe("m")
    assert status["crashes"] == pool_module.CRASH_LOOP_LIMIT + 3 and "quarantined" not in status
    assert status["culprits"] == pool_module.CRASH_LOOP_LIMIT + 2 + 2  # one fingerprint each, two for the grammar
    # An operator's load forgets them.
    await pool.load("m")
    assert pool.describe("m")["culprits"] == 0


async def generate_params(pool: Pool, name: str, params: GenerationParams) -> str:
    async with await pool.acquire(name) as instance:
        return (await instance.complete(params)).text


async def test_a_crash_frees_the_budget_for_another_model(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool([entry("crashy", "crash_abort", 600), entry("fine", "fake", 600)], budget_mib=1000)
    with pytest.raises(WorkerCrashed, match="SIGABRT"):
        await generate(pool, "crashy", 10)
    assert await generate(pool, "fine") == " t0 t1 t2 t3 t4"
    assert pool.describe("crashy")["last_exit_kind"] == "crashed"


async def test_a_refused_load_is_quarantined_and_classified(make_pool) -> None:  # type: ignore[no-untyped-def]
    from warren.errors import WorkerLoadFailed

    pool = await make_pool([entry("bad", "fail_load")])
    with pytest.raises(WorkerLoadFailed):
        await generate(pool, "bad")
    assert pool.describe("bad")["last_exit_kind"] == "load_failed"
    with pytest.raises(Quarantined, match="fake engine refuses"):
        await generate(pool, "bad")


async def test_requests_for_one_model_share_one_load(make_pool) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    pool = await make_pool([entry("m", "slow")])
    texts = await asyncio.gather(*(generate(pool, "m", 3) for _ in range(4)))
    assert texts == [" t0 t1 t2"] * 4
    assert pool.instances["m"].loads == 1 and pool.instances["m"].generation == 1


async def test_the_warm_spare_is_adopted_by_the_next_load(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "SPARE_DELAY", 0.0)
    from warren.options import defaults

    catalog = Catalog({**defaults(), "contextsize": 512, "threads": 2, "blasthreads": 2},
                      active=ModelSettings(name="smol", path=model_path, context_size=512))
    catalog.refresh()
    pool = Pool(ServerSettings(), catalog, budget=4000 * MIB, warm_spare=True)
    try:
        spare = await started_spare(pool)
        async with await pool.acquire("smol") as instance:
            assert instance.handle is spare  # the load paid only for the model
        assert pool._spare_task is not None
        await pool._spare_task  # and a new spare is started for the next load
        assert pool._spare is not None and pool._spare is not spare
    finally:
        await pool.close()


async def test_worker_killed_while_loading(make_pool) -> None:  # type: ignore[no-untyped-def]
    import asyncio
    import os
    import signal

    pool = await make_pool([entry("stuck", "hang_load")])
    request = asyncio.create_task(generate(pool, "stuck"))
    for _ in range(200):
        await asyncio.sleep(0.02)
        inst = pool.instances.get("stuck")
        if inst is not None and inst.handle is not None and inst.handle.pid and inst.state.value == "loading":
            break
    assert inst is not None and inst.handle is not None
    os.kill(inst.handle.pid, signal.SIGKILL)
    with pytest.raises(WorkerCrashed, match="killed by SIGKILL"):
        await request
    assert pool.policy.reserved == 0 and "stuck" not in pool.policy.residents


async def test_no_warm_spare_without_room_in_the_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "SPARE_DELAY", 0.0)
    pool = Pool(ServerSettings(), FixedCatalog([entry("big", "fake", 990)]), budget=1000 * MIB, warm_spare=True)
    try:
        await pool.start(preload=False)
        await generate(pool, "big")  # the load asks for a spare afterwards
        assert pool._spare_task is not None
        await pool._spare_task
        assert pool._spare is None and pool.status()["spare"] == 0  # 10 MiB left: no idle worker started
    finally:
        await pool.close()


async def test_a_swap_prefaults_the_cache_after_the_evicted_worker_ends(make_pool) -> None:  # type: ignore[no-untyped-def]
    def with_cache(e: CatalogEntry) -> CatalogEntry:
        assert e.estimate is not None
        return dataclasses.replace(e, estimate=dataclasses.replace(e.estimate, kv_cache=8 * MIB))

    pool = await make_pool([with_cache(entry("a", "fake", 600)), with_cache(entry("b", "fake", 600))],
                           budget_mib=1000)
    await generate(pool, "a")
    a = pool.instances["a"].handle
    assert a is not None and a.model_info is not None and a.model_info.extra["prefault_after"] == []  # nothing was replaced
    a_pid = a.pid
    await generate(pool, "b")  # evicts a
    b = pool.instances["b"].handle
    assert b is not None and b.model_info is not None and b.model_info.extra["prefault_after"] == [a_pid]
    assert b.model_info.extra["prefault_bytes"] >= 8 * MIB


async def eventually(condition, seconds: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def parkable_entry(name: str, mib: int, parked_mib: int) -> CatalogEntry:
    e = entry(name, "fake", mib)
    assert e.estimate is not None
    return dataclasses.replace(e, estimate=dataclasses.replace(e.estimate, parked=parked_mib * MIB))


async def test_a_swap_parks_the_evicted_model_and_resumes_it_in_the_same_worker(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool([parkable_entry("a", 600, 100), parkable_entry("b", 600, 100)], budget_mib=1000)
    await generate(pool, "a")
    a = pool.instances["a"].handle
    assert a is not None
    await generate(pool, "b")  # a is parked, not stopped: its worker lives on
    assert pool.describe("a")["state"] == "parked" and a.alive
    assert pool.describe("a")["handle"] == "a@1"  # the same instance: its handle stays valid
    assert pool.policy.reserved <= pool.policy.budget
    assert await generate(pool, "a@1") == " t0 t1 t2 t3 t4"  # resumed: same worker, loaded a second time
    assert pool.instances["a"].handle is a and a.model_info is not None and a.model_info.extra["loads"] == 2 \
        and a.model_info.extra["parks"] == 1
    assert sum(t.get_name().startswith("heartbeat") for t in a._tasks) == 1  # a resume adds no second one
    assert pool.describe("b")["state"] == "parked" and pool.status()["parked"] > 0


async def test_a_parked_model_is_stopped_when_its_room_is_needed(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool([parkable_entry("a", 600, 300), parkable_entry("b", 600, 300), entry("c", "fake", 650)],
                           budget_mib=1000)
    await generate(pool, "a")
    await generate(pool, "b")  # a parked: 600 + 300
    a = pool.instances["a"].handle
    assert a is not None and pool.describe("a")["state"] == "parked"
    await generate(pool, "c")  # needs a's parked room and b's: a is stopped, b too (no room to park it)
    await a.exited.wait()
    await eventually(lambda: pool.describe("a")["state"] == "unloaded")
    assert pool.describe("a")["last_exit_kind"] == "requested"
    assert pool.policy.reserved <= pool.policy.budget


async def test_unloading_a_parked_model_stops_its_worker(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool([parkable_entry("a", 600, 100), parkable_entry("b", 600, 100)], budget_mib=1000)
    await generate(pool, "a")
    await generate(pool, "b")
    a = pool.instances["a"].handle
    assert a is not None and a.alive
    assert pool.unload("a")
    await a.exited.wait()
    await eventually(lambda: pool.describe("a")["state"] == "unloaded" and "a" not in pool.policy.residents)


async def test_with_parking_off_the_evicted_worker_is_stopped(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool([parkable_entry("a", 600, 100), parkable_entry("b", 600, 100)], budget_mib=1000,
                           park=False)
    await generate(pool, "a")
    a = pool.instances["a"].handle
    await generate(pool, "b")
    assert a is not None
    await a.exited.wait()
    await eventually(lambda: pool.describe("a")["state"] == "unloaded")
    assert await generate(pool, "a") == " t0 t1 t2 t3 t4" and pool.describe("a")["handle"] == "a@2"


async def test_a_parked_model_whose_entry_changed_is_loaded_afresh(make_pool) -> None:  # type: ignore[no-untyped-def]
    pool = await make_pool([parkable_entry("a", 600, 100), parkable_entry("b", 600, 100)], budget_mib=1000)
    await generate(pool, "a")
    await generate(pool, "b")
    assert pool.describe("a")["state"] == "parked"
    old = pool.catalog.entries["a"]
    assert old.settings is not None
    pool.catalog.entries["a"] = dataclasses.replace(
        old, settings=dataclasses.replace(old.settings, context_size=1024), fingerprint=("a", "changed"))
    await generate(pool, "a")
    assert pool.describe("a")["handle"] == "a@2"  # not the parked worker: a new one, with the new settings
    handle = pool.instances["a"].handle
    assert handle is not None and handle.model_info is not None and handle.model_info.n_ctx == 1024 \
        and handle.model_info.extra["loads"] == 1


async def test_a_parked_worker_that_dies_is_reported_and_loaded_afresh(make_pool) -> None:  # type: ignore[no-untyped-def]
    import os
    import signal

    pool = await make_pool([parkable_entry("a", 600, 100), parkable_entry("b", 600, 100)], budget_mib=1000)
    await generate(pool, "a")
    await generate(pool, "b")
    a = pool.instances["a"].handle
    assert a is not None and pool.describe("a")["state"] == "parked"
    os.kill(a.pid, signal.SIGKILL)  # e.g. the kernel's OOM killer
    await a.exited.wait()
    await eventually(lambda: "a" not in pool.policy.residents)
    assert pool.describe("a")["last_exit_kind"] == "oom_suspected"
    assert await generate(pool, "a") == " t0 t1 t2 t3 t4" and pool.describe("a")["handle"] == "a@2"


async def test_the_warm_spare_goes_when_reservations_leave_no_room_for_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pool_module, "SPARE_DELAY", 0.0)
    pool = Pool(ServerSettings(), FixedCatalog([entry("big", "fake", 980)]), budget=1000 * MIB, warm_spare=True)
    try:
        spare = await started_spare(pool)  # 1000 MiB of room: an idle worker fits
        await generate(pool, "big")  # a fake engine does not adopt the spare, and 980 MiB leaves no room
        assert pool._spare is None
        await spare.exited.wait()
    finally:
        await pool.close()


async def test_interleaved_requests_on_two_parkable_models_all_complete(make_pool) -> None:  # type: ignore[no-untyped-def]
    import asyncio

    pool = await make_pool([parkable_entry("a", 600, 100), parkable_entry("b", 600, 100)], budget_mib=1000)
    names = ["a", "b", "a", "a", "b", "b", "a", "b", "a", "b"]
    texts = await asyncio.gather(*(generate(pool, n, 3) for n in names))
    assert texts == [" t0 t1 t2"] * len(names)
    await eventually(lambda: sorted(pool.describe(n)["state"] for n in "ab") == ["parked", "ready"])
    assert pool.policy.reserved <= pool.policy.budget
    assert all(pool.describe(n)["handle"] == f"{n}@1" for n in "ab")  # parked and resumed, never restarted


async def test_a_worker_killed_by_sigill_is_quarantined_at_once_with_its_cause(  # type: ignore[no-untyped-def]
        make_pool, caplog: pytest.LogCaptureFixture) -> None:
    """An engine that cannot run on this CPU dies of SIGILL at its first decode: the client, the log and
    /api/pool name the cause, and the pool does not start it again (no crash loop)."""
    cause = "killed by SIGILL: the llama.cpp build uses CPU instructions this machine cannot run; rebuild it " \
            "with ./dev.sh rebuild-engine"
    pool = await make_pool([entry("foreign", "illegal_instruction")])
    with pytest.raises(WorkerCrashed) as crashed:
        await generate(pool, "foreign")
    assert crashed.value.message == f"the worker for model 'foreign' crashed: {cause}"
    assert any(cause in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    status = pool.describe("foreign")
    assert status["last_exit_kind"] == "unrunnable" and status["last_exit"] == crashed.value.message
    assert status["state"] == "crashed" and status["quarantined"] == crashed.value.message
    with pytest.raises(Quarantined, match="rebuild it with ./dev.sh rebuild-engine"):
        await generate(pool, "foreign")
    assert pool.instances["foreign"].generation == 1 and pool.instances["foreign"].crashes == 1


async def test_requests_queued_behind_a_frozen_worker_are_served_by_its_replacement(  # type: ignore[no-untyped-def]
        make_pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 item 9: the running stream fails (it cannot be resumed); a request queued by name runs on
    the replacement worker instead of getting the frozen worker's crash; one queued by handle gets 410."""
    import asyncio
    import os
    import signal
    import time

    monkeypatch.setattr(pool_module, "BACKOFF_BASE", 0.01)
    pool = await make_pool([entry("m", "long")])
    lease = await pool.acquire("m")
    instance = await lease.ready()
    assert instance.handle is not None
    pid = instance.handle.pid
    stream = instance.generate(GenerationParams(prompt="x", max_tokens=4000), stream=True)
    assert await anext(stream) == " t0"

    def short(_instance: object) -> GenerationParams:
        return GenerationParams(prompt="x", max_tokens=3)

    by_name = asyncio.create_task(start_generation(pool, "m", short, stream=False))
    by_handle = asyncio.create_task(start_generation(pool, "m@1", short, stream=False))
    await eventually(lambda: instance.queued == 2)
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    with pytest.raises(WorkerCrashed, match="frozen"):
        async for _ in stream:
            pass
    assert time.monotonic() - stopped < 5.0
    lease.release()
    run = await by_name
    run.lease.release()
    assert isinstance(run.first, GenerationResult) and run.first.text == " t0 t1 t2"
    assert run.instance.handle is not None and run.instance.handle.pid != pid and run.instance.handle_id == "m@2"
    with pytest.raises(HandleGone, match="handle m@1 is gone"):
        await by_handle
    status = pool.describe("m")
    assert status["crashes"] == 1 and status["last_exit_kind"] == "frozen" and status["in_flight"] == 0


async def test_a_lease_from_before_a_crash_does_not_count_against_the_new_instance(  # type: ignore[no-untyped-def]
        make_pool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Releasing a lease granted on a worker that crashed must not take a request off the count of the
    instance loaded since, which could then be evicted under a running request."""
    import os
    import signal

    monkeypatch.setattr(pool_module, "BACKOFF_BASE", 0.01)
    pool = await make_pool([entry("m", "fake")])
    old = await pool.acquire("m")
    instance = await old.ready()
    assert instance.handle is not None
    os.kill(instance.handle.pid, signal.SIGKILL)
    await eventually(lambda: "m" not in pool.policy.residents)
    new = await pool.acquire("m")
    await new.ready()
    old.release()
    assert pool.policy.residents["m"].in_flight == 1
    new.release()
    assert pool.policy.residents["m"].in_flight == 0
