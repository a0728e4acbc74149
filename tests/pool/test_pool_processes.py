"""The pool on real worker processes (the local launcher), for what only a real process shows.

Everything else about the pool runs in-process (``test_pool_runtime.py``). These stay on subprocesses
because what they test is the process itself: a real illegal instruction and the kernel's SIGILL, and
a SIGSTOP that the heartbeat finds in ``/proc/PID/stat``. The clock is still the fake one, so the
crash back-off passes at once.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator, Callable

import pytest

from tests.fakes.app import FixedCatalog, fake_entry
from tests.fakes.fake_clock import FakeClock
from warren.catalog import CatalogEntry
from warren.errors import HandleGone, Quarantined, WorkerCrashed
from warren.params import GenerationParams, GenerationResult
from warren.pool.pool import Pool
from warren.pool.retry import start_generation
from warren.settings import ServerSettings
from warren.worker.local import LocalLauncher

MIB = 1 << 20


@pytest.fixture
async def local_pool() -> AsyncIterator[Callable[[list[CatalogEntry]], Pool]]:
    pools: list[Pool] = []

    def make(entries: list[CatalogEntry]) -> Pool:
        pool = Pool(ServerSettings(), FixedCatalog(entries), budget=1000 * MIB, warm_spare=False,
                    launcher=LocalLauncher(), clock=FakeClock())
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


async def generate(pool: Pool, name: str) -> str:
    async with await pool.acquire(name) as instance:
        return (await instance.complete(GenerationParams(prompt="x", max_tokens=5))).text


async def turns_until(condition: Callable[[], bool], turns: int = 1000) -> None:
    """Let the event loop run until ``condition`` holds: turns of the loop, no wall-clock wait."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_a_worker_killed_by_sigill_is_quarantined_at_once_with_its_cause(  # type: ignore[no-untyped-def]
        local_pool, caplog: pytest.LogCaptureFixture) -> None:
    """A real illegal instruction in a real worker: the kernel's SIGILL is classified ``unrunnable``; the
    client, the log and /api/pool name the cause, and the pool does not start it again (no crash loop)."""
    cause = "killed by SIGILL: the llama.cpp build uses CPU instructions this machine cannot run; rebuild it " \
            "with ./dev.sh rebuild-engine"
    pool = local_pool([fake_entry("foreign", "illegal_instruction")])
    await pool.start(preload=False)
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


async def test_requests_queued_behind_a_frozen_worker_are_served_by_its_replacement(local_pool) -> None:  # type: ignore[no-untyped-def]
    """Issue 11 item 9, with a real SIGSTOP the heartbeat reads from /proc: the running stream fails (it
    cannot be resumed); a request queued by name runs on the replacement worker instead of getting the
    frozen worker's crash; one queued by handle gets 410."""
    pool = local_pool([fake_entry("m", "long")])
    await pool.start(preload=False)
    clock = pool.clock
    assert isinstance(clock, FakeClock)
    lease = await pool.acquire("m")
    instance = await lease.ready()
    assert instance.handle is not None
    pid = instance.handle.pid
    stream = instance.generate(GenerationParams(prompt="x", max_tokens=4000), stream=True)
    assert await anext(stream) == " t0"

    def short(_instance: object) -> GenerationParams:
        return GenerationParams(prompt="x", max_tokens=3)

    by_name = asyncio.create_task(clock.drive(start_generation(pool, "m", short, stream=False)))
    by_handle = asyncio.create_task(start_generation(pool, "m@1", short, stream=False))
    await turns_until(lambda: instance.queued == 2)
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
    assert clock.jumped == [("load-m", 0.5)]  # the replacement waited for the crash back-off
    with pytest.raises(HandleGone, match="handle m@1 is gone"):
        await by_handle
    status = pool.describe("m")
    assert status["crashes"] == 1 and status["last_exit_kind"] == "frozen" and status["in_flight"] == 0
