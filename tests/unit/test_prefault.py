"""Pre-faulting the KV cache's memory while the model loads (warren/worker/prefault.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable

import pytest

from warren.worker import prefault as prefault_module
from warren.worker.prefault import Prefault

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and pidfd are Linux's")

MIB = 1 << 20


def eventually(condition: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_faults_the_whole_block_in_then_frees_it() -> None:
    p = Prefault(8 * MIB)
    assert p.nbytes > 8 * MIB  # room for the allocator's and llama.cpp's additions
    p.start()
    eventually(lambda: p.touched == p.nbytes)
    p.finish()
    assert p._block is None and p._thread is None


def test_waits_until_the_replaced_worker_has_ended() -> None:
    victim = subprocess.Popen(["sleep", "60"])
    p = Prefault(4 * MIB, after=[victim.pid])
    try:
        p.start()
        time.sleep(0.2)
        assert p.touched == 0  # its memory is not free yet
        victim.kill()
        victim.wait()
        eventually(lambda: p.touched == p.nbytes)
    finally:
        victim.kill()
        p.finish()


def test_release_never_waits_for_a_worker_that_lingers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefault_module, "EXIT_WAIT", 3600.0)  # a wait that would hang the test (timeout)
    lingering = subprocess.Popen(["sleep", "60"])
    p = Prefault(4 * MIB, after=[lingering.pid])
    try:
        p.start()
        p.release()  # the model finished loading first: go on without the pre-faulted memory
        assert p.touched == 0 and p._thread is None
    finally:
        lingering.kill()
        lingering.wait()
        p.finish()


def test_a_worker_already_gone_is_not_waited_for() -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    p = Prefault(4 * MIB, after=[gone.pid])
    p.start()
    eventually(lambda: p.touched == p.nbytes)
    p.finish()


def test_no_bytes_means_no_thread_and_no_allocator_change() -> None:
    p = Prefault(0)
    p.start()
    assert p._thread is None and p._libc is None
    p.finish()
