"""The launcher seam (warren/worker/launcher.py): what a worker's end means, and the two launchers'
sides of the contract that the pool and handle tests do not show directly."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fakes.inprocess import FIRST_ID, InProcessLauncher
from warren.errors import WarrenError, WorkerCrashed
from warren.params import GenerationParams
from warren.settings import ModelSettings
from warren.worker import protocol as p
from warren.worker.handle import WorkerHandle
from warren.worker.launcher import ExitKind, classify_exit
from warren.worker.local import LocalLauncher

K = ExitKind


@pytest.mark.parametrize(("returncode", "kw", "kind", "how"), [
    (0, {"requested": True}, K.REQUESTED, "stopped"),
    (-signal.SIGKILL, {"requested": True}, K.REQUESTED, "stopped"),  # our own stop escalation
    (-signal.SIGSEGV, {}, K.CRASHED, "killed by SIGSEGV"),
    (-signal.SIGABRT, {}, K.CRASHED, "killed by SIGABRT"),
    (3, {}, K.CRASHED, "exited with status 3"),
    (-signal.SIGKILL, {}, K.OOM_SUSPECTED, "killed by SIGKILL (not sent by warren: out of memory?)"),
    (-signal.SIGILL, {}, K.UNRUNNABLE, "killed by SIGILL: the llama.cpp build uses CPU instructions"),
    (-signal.SIGBUS, {}, K.UNRUNNABLE, "killed by SIGBUS"),
    (-signal.SIGKILL, {"killed_for": "it did not answer Ping", "killed_kind": K.FROZEN}, K.FROZEN,
     "it did not answer Ping"),
    (-signal.SIGKILL, {"killed_for": "it did not answer Load within 1 s"}, K.HUNG, "it did not answer Load"),
    (-signal.SIGKILL, {"protocol_error": "it sent an invalid frame (x)", "killed_for": "late"}, K.CRASHED,
     "it sent an invalid frame (x)"),
    (-signal.SIGKILL, {"lost": "its node n2 left the cluster"}, K.LOST, "its node n2 left the cluster"),
    (None, {"lost": "its node n2 left the cluster", "killed_for": "it did not answer Ping"}, K.LOST, "its node"),
    (-signal.SIGKILL, {"lost": "its node n2 left the cluster", "requested": True}, K.REQUESTED, "stopped"),
])
def test_what_an_exit_means(returncode: int, kw: dict[str, object], kind: ExitKind, how: str) -> None:
    got_kind, got_how = classify_exit(returncode, **{"requested": False, **kw})  # type: ignore[arg-type]
    assert got_kind is kind and got_how.startswith(how)


def fake(engine: str = "fake") -> ModelSettings:
    return ModelSettings(name=engine, path=Path("/dev/null"), engine=f"tests.fakes.fake_engine:{engine}")


async def test_an_in_process_worker_speaks_the_protocol_over_its_socketpair() -> None:
    launcher = InProcessLauncher()
    handle = WorkerHandle(fake(), launcher=launcher)
    await handle.start()
    assert handle.pid == FIRST_ID  # an id no real process has
    info = await handle.load()
    assert info.n_ctx == 8192
    frames = [f async for f in handle.generate(GenerationParams(prompt="x", max_tokens=3), True)]
    assert [f.text for f in frames if isinstance(f, p.Token)] == [" t0", " t1", " t2"]
    assert await handle.call(p.Tokenize, text="ab c") == [2, 1]
    await handle.stop()
    worker = launcher.workers[0]
    assert handle.exit_kind is ExitKind.REQUESTED and worker.returncode == 0  # it ended on EOF, as a process does


async def test_a_death_injected_in_process_looks_like_a_killed_process() -> None:
    launcher = InProcessLauncher()
    handle = WorkerHandle(fake(), launcher=launcher)
    await handle.start()
    await handle.load()
    launcher.workers[0].die(signal.SIGSEGV)
    await handle.exited.wait()
    assert handle.worker is not None and handle.worker.returncode == -signal.SIGSEGV
    assert handle.exit_kind is ExitKind.CRASHED
    assert isinstance(handle.exit_error, WorkerCrashed) and "killed by SIGSEGV" in handle.exit_error.message
    await handle.stop()


async def test_an_in_process_worker_keeps_its_output() -> None:
    """What a worker writes (here the child's own report of a bug in the engine) lands in its output ring,
    as a process's stderr does, and crash reports quote it."""
    launcher = InProcessLauncher()
    handle = WorkerHandle(fake(), launcher=launcher)
    await handle.start()
    await handle.load()
    with pytest.raises(WarrenError, match="internal error in the worker"):
        await handle.call(p.Tokenize, text=None)  # type: ignore[arg-type]
    assert any("Traceback" in line for line in handle.stderr_tail)
    await handle.stop()


async def test_the_in_process_launcher_refuses_the_real_engine() -> None:
    with pytest.raises(ValueError, match="llama_cpp must stay out"):
        await InProcessLauncher().start(ModelSettings(name="m", path=Path("/dev/null")))


def test_the_local_launcher_measures_pss() -> None:
    @dataclass
    class Process:
        pid: int
        returncode: int | None = None

    this, ended = Process(os.getpid()), Process(os.getpid(), returncode=0)
    footprints = LocalLauncher().measure([this, ended])  # type: ignore[list-item]
    assert footprints[0].pss > 10 << 20 and footprints[0].gpu == 0  # this interpreter: tens of MiB
    assert footprints[1].total == 0  # an ended worker holds nothing
