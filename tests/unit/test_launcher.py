"""The launcher seam (warren/worker/launcher.py): what a worker's end means, and the two launchers'
sides of the contract that the pool and handle tests do not show directly."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

import pytest

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
])
def test_what_an_exit_means(returncode: int, kw: dict[str, object], kind: ExitKind, how: str) -> None:
    got_kind, got_how = classify_exit(returncode, **{"requested": False, **kw})  # type: ignore[arg-type]
    assert got_kind is kind and got_how.startswith(how)


def test_the_local_launcher_measures_pss() -> None:
    @dataclass
    class Process:
        pid: int
        returncode: int | None = None

    this, ended = Process(os.getpid()), Process(os.getpid(), returncode=0)
    footprints = LocalLauncher().measure([this, ended])  # type: ignore[list-item]
    assert footprints[0].pss > 10 << 20 and footprints[0].gpu == 0  # this interpreter: tens of MiB
    assert footprints[1].total == 0  # an ended worker holds nothing
