"""The pool carrying out its decisions on workers: the in-process launcher and a fake clock.

Every worker here is the real child-side ``Worker`` with a fake engine on threads of this process
(``tests/fakes/inprocess.py``), behind the real ``WorkerHandle``; faults are injected as "died by signal
N" without a signal. Time is ``tests/fakes/fake_clock.py``: back-offs, keep-alives, deadlines and the
spare's delay pass when a test says so, and the tests wait on the pool's events, never on a sleep.
The few tests that need real processes (real signals, the process state the heartbeat reads) are in
``test_pool_processes.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from tests.fakes.app import FixedCatalog, fake_entry
from tests.fakes.fake_clock import FakeClock
from tests.fakes.inprocess import InProcessLauncher
from warren.catalog import CatalogEntry
from warren.errors import Busy, DoesNotFit, Quarantined, RequestRefused, WorkerCrashed, WorkerLoadFailed
from warren.params import GenerationParams
from warren.pool.crashes import CRASH_LOOP_LIMIT
from warren.pool.memory import MEASURE_DELAY
from warren.pool.pool import Pool
from warren.pool.spare import SPARE_DELAY
from warren.settings import ServerSettings
from warren.worker.launcher import Footprint

MIB = 1 << 20


def entry(name: str, engine: str = "fake", mib: int = 100, **knobs: Any) -> CatalogEntry:
    return fake_entry(name, engine, mib, **knobs)


def parkable_entry(name: str, mib: int, parked_mib: int) -> CatalogEntry:
    return fake_entry(name, "fake", mib, parked_mib=parked_mib)


@dataclasses.dataclass
class Harness:
    pool: Pool
    launcher: InProcessLauncher
    clock: FakeClock
    events: asyncio.Queue[dict[str, Any]]

    async def event(self, kind: str, model: str) -> dict[str, Any]:
        """The next ``kind`` event about ``model`` (earlier events are skipped)."""
        while True:
            e = await self.events.get()
            if e["type"] == kind and e.get("model") == model:
                return e

    async def generate(self, name: str, n: int = 5, **params: Any) -> str:
        async with await self.pool.acquire(name) as instance:
            return (await instance.complete(GenerationParams(prompt=params.pop("prompt", "x"), max_tokens=n,
                                                             **params))).text

    def describe(self, name: str) -> dict[str, Any]:
        return self.pool.describe(name)


Make = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make() -> AsyncIterator[Make]:
    pools: list[Pool] = []
    async with contextlib.AsyncExitStack() as stack:

        async def build(entries: list[CatalogEntry], budget_mib: int = 1000, *, launcher: InProcessLauncher | None = None,
                        **kw: Any) -> Harness:
            launcher = launcher or InProcessLauncher()
            clock = FakeClock()
            kw.setdefault("warm_spare", False)
            pool = Pool(ServerSettings(), FixedCatalog(entries), budget=budget_mib * MIB, launcher=launcher,
                        clock=clock, **kw)
            events = await stack.enter_async_context(pool.events.subscribe())
            await pool.start(preload=False)
            pools.append(pool)
            return Harness(pool, launcher, clock, events)

        yield build
        for pool in pools:
            await pool.close()


# -- crashes, back-off, quarantine (warren/pool/crashes.py) ------------------------------------------------

async def test_a_model_that_crashes_by_itself_restarts_with_backoff_then_is_quarantined(make: Make) -> None:
    """Quarantine is for models that fail without a hostile request: this one dies while idle, each
    restart waiting 0.5 s · 2ⁿ⁻¹ after the last crash."""
    h = await make([entry("crashy")])
    for attempt in range(CRASH_LOOP_LIMIT):
        assert await h.clock.drive(h.generate("crashy")) == " t0 t1 t2 t3 t4"
        (await h.launcher.started(attempt + 1)).die(signal.SIGSEGV)  # idle: the model's crash
        crashed = await h.event("crashed", "crashy")
        assert "charged_to_request" not in crashed
        status = h.describe("crashy")
        assert status["last_exit_kind"] == "crashed" and "killed by SIGSEGV" in status["last_exit"]
        assert status["crashes"] == attempt + 1 and "crashy" not in h.pool.policy.residents
    assert h.clock.jumped == [("load-crashy", 0.5), ("load-crashy", 1.0), ("load-crashy", 2.0)]
    with pytest.raises(Quarantined, match="crashed 4 times in 120 s"):
        await h.generate("crashy")
    assert h.describe("crashy")["state"] == "crashed" and h.pool.policy.reserved == 0
    # An operator's explicit load lifts the quarantine, and forgets the crashes: no back-off.
    instance = await h.pool.load("crashy")
    assert instance.generation == CRASH_LOOP_LIMIT + 1 and len(h.clock.jumped) == 3


async def test_a_crash_during_a_request_is_charged_to_it_not_to_the_model(make: Make) -> None:
    """Requests that crash the worker (llama.cpp aborting on what they asked for) never quarantine the
    model, however many; each is refused when it comes again, and other requests are served."""
    h = await make([entry("m", "crash_on_marker")])
    for i in range(CRASH_LOOP_LIMIT + 2):
        with pytest.raises(WorkerCrashed, match="SIGABRT"):
            await h.clock.drive(h.generate("m", 3, prompt=f"CRASH {i}"))
    # Charged crashes restart after a short back-off: 0.25 s · 2ⁿ⁻¹, at most 2 s.
    assert [s for _, s in h.clock.jumped] == [0.25, 0.5, 1.0, 2.0, 2.0]
    assert await h.clock.drive(h.generate("m", 3)) == " t0 t1 t2"  # not quarantined
    pid = h.describe("m")["pid"]
    with pytest.raises(RequestRefused, match="this request crashed the worker of model 'm' before .*SIGABRT"):
        await h.generate("m", 3, prompt="CRASH 0", seed=99)
    assert h.describe("m")["pid"] == pid  # refused before it reached the worker
    # A grammar that crashed it is refused whatever the prompt: its constraint fingerprint matches.
    with pytest.raises(WorkerCrashed):
        await h.generate("m", 3, grammar='root ::= "CRASH"')
    with pytest.raises(RequestRefused):
        await h.clock.drive(h.generate("m", 3, prompt="y", grammar='root ::= "CRASH"'))
    status = h.describe("m")
    assert status["crashes"] == CRASH_LOOP_LIMIT + 3 and "quarantined" not in status
    assert status["culprits"] == CRASH_LOOP_LIMIT + 2 + 2  # one fingerprint each, two for the grammar
    await h.clock.drive(h.pool.load("m"))  # an operator's load forgets them
    assert h.describe("m")["culprits"] == 0


async def test_a_crash_frees_the_budget_for_another_model(make: Make) -> None:
    h = await make([entry("crashy", "crash_abort", 600), entry("fine", "fake", 600)], budget_mib=1000)
    with pytest.raises(WorkerCrashed, match="SIGABRT"):
        await h.generate("crashy", 10)
    assert await h.generate("fine") == " t0 t1 t2 t3 t4"
    assert h.describe("crashy")["last_exit_kind"] == "crashed"


async def test_a_refused_load_is_quarantined_and_classified(make: Make) -> None:
    h = await make([entry("bad", "fail_load")])
    with pytest.raises(WorkerLoadFailed):
        await h.generate("bad")
    assert h.describe("bad")["last_exit_kind"] == "load_failed" and h.describe("bad")["state"] == "load_failed"
    with pytest.raises(Quarantined, match="fake engine refuses"):
        await h.generate("bad")


async def test_an_unrunnable_worker_is_quarantined_at_once(make: Make) -> None:
    """SIGILL (an engine built for another CPU) is not a crash loop in the making: no second start."""
    h = await make([entry("foreign", "illegal_instruction")])
    with pytest.raises(WorkerCrashed, match="killed by SIGILL: the llama.cpp build uses CPU instructions"):
        await h.generate("foreign")
    status = h.describe("foreign")
    assert status["last_exit_kind"] == "unrunnable" and status["state"] == "crashed"
    assert status["quarantined"] == status["last_exit"]
    with pytest.raises(Quarantined):
        await h.generate("foreign")
    assert len(h.launcher.workers) == 1


async def test_worker_killed_while_loading(make: Make) -> None:
    h = await make([entry("stuck", "hang_load")])
    request = asyncio.create_task(h.generate("stuck"))
    worker = await h.launcher.started(1)
    await worker.reached("load")
    assert h.describe("stuck")["state"] == "loading"
    worker.die(signal.SIGKILL)
    with pytest.raises(WorkerCrashed, match="killed by SIGKILL"):
        await request
    assert h.pool.policy.reserved == 0 and "stuck" not in h.pool.policy.residents


async def test_a_lease_from_before_a_crash_does_not_count_against_the_new_instance(make: Make) -> None:
    """Releasing a lease granted on a worker that crashed must not take a request off the count of the
    instance loaded since, which could then be evicted under a running request."""
    h = await make([entry("m")])
    old = await h.pool.acquire("m")
    await old.ready()
    (await h.launcher.started(1)).die(signal.SIGKILL)
    await h.event("crashed", "m")
    assert h.describe("m")["last_exit_kind"] == "oom_suspected"
    new = await h.pool.acquire("m")
    await h.clock.drive(new.ready())
    old.release()
    assert h.pool.policy.residents["m"].in_flight == 1
    new.release()
    assert h.pool.policy.residents["m"].in_flight == 0


# -- loads, waiting, keep-alive ------------------------------------------------------------------------

async def test_requests_for_one_model_share_one_load(make: Make) -> None:
    h = await make([entry("m")])
    texts = await asyncio.gather(*(h.generate("m", 3) for _ in range(4)))
    assert texts == [" t0 t1 t2"] * 4
    assert h.pool.instances["m"].loads == 1 and len(h.launcher.workers) == 1


async def test_an_idle_model_is_unloaded_when_its_keep_alive_expires(make: Make) -> None:
    h = await make([entry("m")], keep_alive=300.0)
    await h.generate("m")
    h.clock.advance(299.0)
    await h.clock.until_sleeping("pool-tick")  # the tick woken by the advance ran: nothing expired yet
    assert "m" in h.pool.policy.residents and h.describe("m")["expires_in"] == pytest.approx(1.0)
    h.clock.advance(1.0)
    unloaded = await h.event("unloaded", "m")
    assert unloaded["reason"] == "keep-alive expired" and h.describe("m")["state"] == "unloaded"


async def test_a_request_waiting_for_room_gets_503_at_its_deadline(make: Make) -> None:
    h = await make([entry("a", mib=600), entry("b", mib=600)], wait_seconds=60.0)
    busy = await h.pool.acquire("a")  # a is busy: it cannot be evicted for b
    waiting = asyncio.create_task(h.pool.acquire("b"))
    await h.event("waiting", "b")
    assert len(h.pool.policy.waiting) == 1
    h.clock.advance(60.0)
    with pytest.raises(Busy, match="no room to load model 'b' within 60 s"):
        await waiting
    busy.release()


async def test_a_request_that_gives_up_waiting_loads_and_evicts_nothing(make: Make) -> None:
    h = await make([entry("a", mib=600), entry("b", mib=600)])
    busy = await h.pool.acquire("a")
    await busy.ready()
    waiting = asyncio.create_task(h.pool.acquire("b"))
    await h.event("waiting", "b")
    assert [w.model for w in h.pool.policy.waiting] == ["b"]
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert not h.pool.policy.waiting
    busy.release()  # room now: nothing may be evicted or loaded for the client that left
    assert h.pool.policy.residents["a"].phase == "ready" and "b" not in h.pool.policy.residents
    assert len(h.launcher.workers) == 1


async def test_a_model_larger_than_the_budget_is_refused_at_once(make: Make) -> None:
    h = await make([entry("huge", mib=2000)], budget_mib=1000)
    with pytest.raises(DoesNotFit, match="more than the whole memory budget"):
        await h.pool.acquire("huge")
    assert not h.launcher.workers


# -- memory measurement (warren/pool/memory.py) ---------------------------------------------------------

async def test_the_measured_footprint_replaces_the_estimate(make: Make) -> None:
    launcher = InProcessLauncher(footprint=lambda worker: Footprint(150 * MIB, 10 * MIB))
    h = await make([entry("m", mib=100)], launcher=launcher)
    await h.generate("m")
    assert h.pool.policy.residents["m"].bytes == 100 * MIB  # the estimate, until measured
    assert await h.clock.until_sleeping("measure-m") == MEASURE_DELAY
    h.clock.advance(MEASURE_DELAY)
    await h.event("measured", "m")
    assert h.pool.policy.residents["m"].bytes == 160 * MIB
    memory = h.describe("m")["memory"]
    assert memory["measured"] == 160 * MIB and memory["reserved"] == 160 * MIB and memory["gpu"] is None
    # The next load of the entry reserves what was measured, not the estimate.
    assert h.pool.footprints.need(h.pool.catalog.entries["m"]) == 160 * MIB


async def test_idle_models_are_measured_again_by_the_tick(make: Make) -> None:
    sizes = iter([120 * MIB, 180 * MIB])
    launcher = InProcessLauncher(footprint=lambda worker: Footprint(next(sizes)))
    h = await make([entry("m", mib=100)], launcher=launcher)
    await h.generate("m")
    h.clock.advance(MEASURE_DELAY)
    await h.event("measured", "m")
    assert h.pool.policy.residents["m"].bytes == 120 * MIB
    h.pool.tick()  # the fifth tick measures the idle residents (this is the first: it does too)
    await h.event("measured", "m")
    assert h.pool.policy.residents["m"].bytes == 180 * MIB and h.pool.status()["measured"] == 180 * MIB


# -- the warm spare (warren/pool/spare.py) ----------------------------------------------------------------

async def test_the_warm_spare_is_adopted_by_the_next_load(make: Make) -> None:
    h = await make([entry("m", mib=100)], warm_spare=True)
    spare = h.pool.spare
    spare.ensure()
    assert await h.clock.until_sleeping("spare") == SPARE_DELAY  # not at once: after the load's first request
    h.clock.advance(SPARE_DELAY)
    assert spare.task is not None
    await spare.task
    first = spare.handle
    assert first is not None and first.alive and h.pool.status()["spare"] == 0  # measured 0 by the fake
    async with await h.pool.acquire("m") as instance:
        assert instance.handle is first  # the load paid only for the model
    # A new spare follows, a moment after the load.
    await h.clock.until_sleeping("spare")
    h.clock.advance(SPARE_DELAY)
    await spare.task
    assert spare.handle is not None and spare.handle is not first and len(h.launcher.workers) == 2


async def test_the_warm_spare_waits_until_no_model_generates(make: Make) -> None:
    """Its start takes a core for ~0.4 s: beside a generation on a 2-core machine, that slowed the generation."""
    h = await make([entry("m", mib=100)], warm_spare=True)
    spare = h.pool.spare
    async with h.pool.compute.running_on("busy@1", 2, lambda share: None):
        spare.ensure()
        await h.clock.until_sleeping("spare")
        h.clock.advance(SPARE_DELAY)
        while not spare.waiting_for_idle:  # the task runs up to its wait (no time passes)
            await asyncio.sleep(0)
        assert spare.handle is None and len(h.launcher.workers) == 0
    assert spare.task is not None
    await spare.task
    assert spare.handle is not None and len(h.launcher.workers) == 1


async def test_no_warm_spare_without_room_in_the_budget(make: Make) -> None:
    h = await make([entry("big", mib=990)], budget_mib=1000, warm_spare=True)
    await h.generate("big")  # the load asks for a spare afterwards
    await h.clock.until_sleeping("spare")
    h.clock.advance(SPARE_DELAY)
    assert h.pool.spare.task is not None
    await h.pool.spare.task
    assert h.pool.spare.handle is None and h.pool.status()["spare"] == 0  # 10 MiB left: no idle worker
    assert len(h.launcher.workers) == 1


async def test_the_warm_spare_goes_when_reservations_leave_no_room_for_it(make: Make) -> None:
    launcher = InProcessLauncher(footprint=lambda worker: Footprint(30 * MIB))
    h = await make([entry("big", "slow", mib=980)], budget_mib=1000, warm_spare=True, launcher=launcher)
    h.pool.spare.ensure()
    await h.clock.until_sleeping("spare")
    h.clock.advance(SPARE_DELAY)
    assert h.pool.spare.task is not None
    await h.pool.spare.task
    spare = h.pool.spare.handle
    assert spare is not None and h.pool.status()["spare"] == 30 * MIB  # 1000 MiB of room: an idle worker fits
    await h.generate("big")  # another engine does not adopt the spare, and 980 MiB leave no room for it
    assert h.pool.spare.handle is None
    await spare.exited.wait()


# -- parking ---------------------------------------------------------------------------------------------

async def test_a_swap_prefaults_the_cache_after_the_evicted_worker_ends(make: Make) -> None:
    h = await make([fake_entry("a", mib=600, kv_mib=8), fake_entry("b", mib=600, kv_mib=8)], budget_mib=1000)
    await h.generate("a")
    a = h.pool.instances["a"].handle
    assert a is not None and a.model_info is not None and a.model_info.extra["prefault_after"] == []  # nothing was replaced
    await h.generate("b")  # evicts a
    b = h.pool.instances["b"].handle
    assert b is not None and b.model_info is not None and b.model_info.extra["prefault_after"] == [a.pid]
    assert b.model_info.extra["prefault_bytes"] >= 8 * MIB


async def test_a_swap_parks_the_evicted_model_and_resumes_it_in_the_same_worker(make: Make) -> None:
    h = await make([parkable_entry("a", 600, 100), parkable_entry("b", 600, 100)], budget_mib=1000)
    await h.generate("a")
    a = h.pool.instances["a"].handle
    assert a is not None
    await h.generate("b")  # a is parked, not stopped: its worker lives on
    assert h.describe("a")["state"] == "parked" and a.alive
    assert h.describe("a")["handle"] == "a@1"  # the same instance: its handle stays valid
    assert h.pool.policy.reserved <= h.pool.policy.budget
    assert await h.generate("a@1") == " t0 t1 t2 t3 t4"  # resumed: same worker, loaded a second time
    assert h.pool.instances["a"].handle is a and a.model_info is not None \
        and a.model_info.extra["loads"] == 2 and a.model_info.extra["parks"] == 1
    assert sum(t.get_name().startswith("heartbeat") for t in a._tasks) == 1  # a resume adds no second one
    assert h.describe("b")["state"] == "parked" and h.pool.status()["parked"] > 0
    assert len(h.launcher.workers) == 2


async def test_a_parked_model_is_stopped_when_its_room_is_needed(make: Make) -> None:
    h = await make([parkable_entry("a", 600, 300), parkable_entry("b", 600, 300), entry("c", mib=650)],
                   budget_mib=1000)
    await h.generate("a")
    await h.generate("b")  # a parked: 600 + 300
    assert h.describe("a")["state"] == "parked"
    await h.generate("c")  # needs a's parked room and b's: a is stopped, b too (no room to park it)
    await h.event("unloaded", "a")
    assert h.describe("a")["state"] == "unloaded" and h.describe("a")["last_exit_kind"] == "requested"
    assert h.pool.policy.reserved <= h.pool.policy.budget


async def test_unloading_a_parked_model_stops_its_worker(make: Make) -> None:
    h = await make([parkable_entry("a", 600, 100), parkable_entry("b", 600, 100)], budget_mib=1000)
    await h.generate("a")
    await h.generate("b")
    a = h.pool.instances["a"].handle
    assert a is not None and a.alive
    assert h.pool.unload("a")
    await h.event("unloaded", "a")
    assert not a.alive and h.describe("a")["state"] == "unloaded" and "a" not in h.pool.policy.residents


async def test_with_parking_off_the_evicted_worker_is_stopped(make: Make) -> None:
    h = await make([parkable_entry("a", 600, 100), parkable_entry("b", 600, 100)], budget_mib=1000, park=False)
    await h.generate("a")
    await h.generate("b")
    await h.event("unloaded", "a")
    assert h.describe("a")["state"] == "unloaded"
    assert await h.generate("a") == " t0 t1 t2 t3 t4" and h.describe("a")["handle"] == "a@2"


async def test_a_parked_model_whose_entry_changed_is_loaded_afresh(make: Make) -> None:
    h = await make([parkable_entry("a", 600, 100), parkable_entry("b", 600, 100)], budget_mib=1000)
    await h.generate("a")
    await h.generate("b")
    assert h.describe("a")["state"] == "parked"
    old = h.pool.catalog.entries["a"]
    assert old.settings is not None
    h.pool.catalog.entries["a"] = dataclasses.replace(
        old, settings=dataclasses.replace(old.settings, context_size=1024), fingerprint=("a", "changed"))
    await h.generate("a")
    assert h.describe("a")["handle"] == "a@2"  # not the parked worker: a new one, with the new settings
    handle = h.pool.instances["a"].handle
    assert handle is not None and handle.model_info is not None \
        and handle.model_info.n_ctx == 1024 and handle.model_info.extra["loads"] == 1


async def test_a_parked_worker_that_dies_is_reported_and_loaded_afresh(make: Make) -> None:
    h = await make([parkable_entry("a", 600, 100), parkable_entry("b", 600, 100)], budget_mib=1000)
    await h.generate("a")
    await h.generate("b")
    assert h.describe("a")["state"] == "parked"
    h.launcher.workers[0].die(signal.SIGKILL)  # e.g. the kernel's OOM killer
    await h.event("crashed", "a")
    assert "a" not in h.pool.policy.residents and h.describe("a")["last_exit_kind"] == "oom_suspected"
    assert await h.clock.drive(h.generate("a")) == " t0 t1 t2 t3 t4" and h.describe("a")["handle"] == "a@2"


async def test_interleaved_requests_on_two_parkable_models_all_complete(make: Make) -> None:
    h = await make([parkable_entry("a", 600, 100), parkable_entry("b", 600, 100)], budget_mib=1000)
    names = ["a", "b", "a", "a", "b", "b", "a", "b", "a", "b"]
    texts = await asyncio.gather(*(h.generate(n, 3) for n in names))
    assert texts == [" t0 t1 t2"] * len(names)
    assert sorted(h.describe(n)["state"] for n in "ab") == ["parked", "ready"]
    assert h.pool.policy.reserved <= h.pool.policy.budget
    assert all(h.describe(n)["handle"] == f"{n}@1" for n in "ab")  # parked and resumed, never restarted
    assert len(h.launcher.workers) == 2
