"""Faults a real model cannot produce on demand, from fake engines in real worker processes."""

from __future__ import annotations

import time
from pathlib import Path

import psutil
import pytest

from warren.errors import WorkerCrashed, WorkerLoadFailed
from warren.params import GenerationParams
from warren.settings import ModelSettings
from warren.worker import protocol as p
from warren.worker.handle import WorkerHandle


def fake_settings(factory: str) -> ModelSettings:
    return ModelSettings(name=f"fake-{factory}", path=Path("/dev/null"), engine=f"tests.fakes.fake_engine:{factory}")


async def started(factory: str, **kw: float) -> WorkerHandle:
    handle = WorkerHandle(fake_settings(factory), **kw)  # type: ignore[arg-type]
    await handle.start()
    return handle


async def collect(handle: WorkerHandle, n: int = 20) -> list[p.Frame]:
    return [f async for f in handle.generate(GenerationParams(prompt="x", max_tokens=n), True)]


async def test_fake_engine_serves() -> None:
    handle = await started("fake")
    await handle.load()
    frames = await collect(handle, 5)
    assert [f.text for f in frames if isinstance(f, p.Token)] == [" t0", " t1", " t2", " t3", " t4"]
    await handle.stop()


async def test_load_failure_is_reported_with_its_message() -> None:
    handle = await started("fail_load")
    with pytest.raises(WorkerLoadFailed, match="fake engine refuses to load fake-fail_load"):
        await handle.load()
    assert handle.alive  # a refused load is an answer, not a crash
    await handle.stop()
    assert not psutil.pid_exists(handle.pid)


async def test_hang_in_load_is_killed_after_the_timeout() -> None:
    handle = await started("hang_load", load_timeout=1.0)
    began = time.monotonic()
    with pytest.raises(WorkerCrashed, match="did not answer Load within 1 s"):
        await handle.load()
    assert time.monotonic() - began < 5
    assert not psutil.pid_exists(handle.pid)


@pytest.mark.parametrize(("factory", "signal_name"), [("crash_segv", "SIGSEGV"), ("crash_abort", "SIGABRT")])
async def test_native_crash_mid_stream(factory: str, signal_name: str) -> None:
    handle = await started(factory)
    await handle.load()
    tokens = 0
    with pytest.raises(WorkerCrashed) as info:
        async for frame in handle.generate(GenerationParams(prompt="x", max_tokens=20), True):
            tokens += isinstance(frame, p.Token)
    assert tokens == 3  # what was streamed before the crash arrived
    assert f"crashed: killed by {signal_name}" in info.value.message
    assert info.value.details["returncode"] < 0
    await handle.stop()


async def test_garbage_on_the_channel_is_a_crash() -> None:
    handle = await started("garbage")
    await handle.load()
    with pytest.raises(WorkerCrashed, match="it sent an invalid frame"):
        await collect(handle)
    await handle.stop()
    assert not psutil.pid_exists(handle.pid)


async def test_requests_after_a_crash_fail_fast() -> None:
    handle = await started("crash_segv")
    await handle.load()
    with pytest.raises(WorkerCrashed):
        await collect(handle)
    with pytest.raises(WorkerCrashed):
        await handle.call(p.Tokenize, text="x")
    await handle.stop()


async def test_stop_escalates_to_sigkill_for_a_wedged_worker(caplog: pytest.LogCaptureFixture) -> None:
    import asyncio
    import logging

    caplog.set_level(logging.INFO)
    handle = await started("wedged", heartbeat=False)  # type: ignore[arg-type]
    await handle.load()
    gen = handle.generate(GenerationParams(prompt="x", max_tokens=50), True)
    assert isinstance(await anext(gen), p.Token)
    await asyncio.sleep(0.3)  # it is now wedged at token 2
    await handle.stop(grace=0.3)
    assert not psutil.pid_exists(handle.pid)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "sending SIGTERM" in messages and "sending SIGKILL" in messages
    await gen.aclose()


async def test_missed_heartbeats_kill_a_hung_worker() -> None:
    handle = await started("wedged", heartbeat_interval=0.2, heartbeat_timeout=0.5)  # type: ignore[arg-type]
    await handle.load()
    with pytest.raises(WorkerCrashed, match="did not answer Ping within 0.5 s"):
        await collect(handle, 50)
    assert not psutil.pid_exists(handle.pid)
