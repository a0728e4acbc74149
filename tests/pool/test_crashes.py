"""Crash counting, quarantine and back-off as transcripts: times are numbers (warren/pool/crashes.py)."""

from __future__ import annotations

import pytest

from warren.params import GenerationParams
from warren.pool.crashes import CRASH_LOOP_LIMIT, CRASH_WINDOW, CrashGuard
from warren.worker.launcher import ExitKind

FP = ("m", "v1")


def crash(guard: CrashGuard, now: float, kind: ExitKind = ExitKind.CRASHED, culprit: GenerationParams | None = None,
          message: str = "killed by SIGSEGV") -> bool:
    return guard.crashed("m", kind=kind, message=message, fingerprint=FP, now=now, culprit=culprit)


def test_the_back_off_doubles_from_the_last_crash_and_time_counts_against_it() -> None:
    g = CrashGuard()
    assert g.backoff("m", 0.0) == 0.0
    crash(g, 10.0)
    assert g.backoff("m", 10.0) == 0.5
    assert g.backoff("m", 10.2) == pytest.approx(0.3)  # time since the crash counts
    assert g.backoff("m", 11.0) == 0.0  # nothing left to wait
    crash(g, 11.0)
    assert g.backoff("m", 11.0) == 1.0
    crash(g, 12.0)
    assert g.backoff("m", 12.0) == 2.0 and g.reason("m") is None


def test_the_back_off_is_capped_at_30_s() -> None:
    g = CrashGuard(limit=100)
    for t in range(8):
        crash(g, float(t))
    assert g.backoff("m", 7.0) == 30.0  # 0.5 * 2**7 = 64, capped


def test_the_fourth_crash_within_the_window_quarantines_the_model() -> None:
    g = CrashGuard()
    for t in range(CRASH_LOOP_LIMIT - 1):
        crash(g, float(t))
    assert g.check("m", FP) is None
    crash(g, 3.0, message="killed by SIGSEGV (4th)")
    q = g.check("m", FP)
    assert q is not None and q.reason == "it crashed 4 times in 120 s (last: killed by SIGSEGV (4th))"


def test_crashes_older_than_the_window_are_forgotten() -> None:
    g = CrashGuard()
    for t in (0.0, 1.0, 2.0):
        crash(g, t)
    crash(g, 2.0 + CRASH_WINDOW)  # the first three are out of the window now: one crash, not four
    assert g.check("m", FP) is None and g.backoff("m", 2.0 + CRASH_WINDOW) == 0.5


@pytest.mark.parametrize("kind", [ExitKind.OOM_SUSPECTED, ExitKind.HUNG, ExitKind.FROZEN])
def test_other_deaths_count_as_the_model_s(kind: ExitKind) -> None:
    g = CrashGuard()
    assert crash(g, 0.0, kind, culprit=GenerationParams(prompt="x")) is False  # not charged, even mid-request
    assert g.backoff("m", 0.0) == 0.5 and g.culprits.count("m") == 0


def test_an_unrunnable_exit_quarantines_at_once() -> None:
    g = CrashGuard()
    crash(g, 0.0, ExitKind.UNRUNNABLE, message="killed by SIGILL: rebuild it")
    q = g.check("m", FP)
    assert q is not None and q.reason == "killed by SIGILL: rebuild it"


def test_a_crash_during_a_request_is_charged_to_it_with_a_short_back_off() -> None:
    g = CrashGuard()
    params = GenerationParams(prompt="CRASH")
    assert crash(g, 0.0, culprit=params, message="killed by SIGABRT") is True
    assert g.culprits.count("m") == 1 and g.backoff("m", 0.0) == 0.25
    for t in range(1, 10):
        crash(g, float(t), culprit=GenerationParams(prompt=f"CRASH {t}"))
    assert g.check("m", FP) is None  # requests' crashes never quarantine the model
    assert g.backoff("m", 9.0) == 2.0  # 0.25 * 2**9, capped at 2 s


def test_the_longer_of_the_two_back_offs_applies() -> None:
    g = CrashGuard()
    crash(g, 0.0)  # the model's: 0.5 s
    crash(g, 0.0, culprit=GenerationParams(prompt="x"))  # a request's: 0.25 s
    assert g.backoff("m", 0.0) == 0.5


def test_a_refused_load_quarantines_until_the_fingerprint_changes() -> None:
    g = CrashGuard()
    g.load_failed("m", fingerprint=FP, message="not a GGUF file")
    assert g.check("m", FP) is not None and g.reason("m") == "not a GGUF file"
    assert g.check("m", ("m", "v2")) is None  # the file or settings changed: worth another try
    assert g.reason("m") is None and g.check("m", FP) is None


def test_an_operator_load_lifts_everything() -> None:
    g = CrashGuard()
    for t in range(CRASH_LOOP_LIMIT):
        crash(g, float(t))
    crash(g, 4.0, culprit=GenerationParams(prompt="x"))
    assert g.check("m", FP) is not None and g.culprits.count("m") == 1
    g.lift("m")
    assert g.check("m", FP) is None and g.culprits.count("m") == 0 and g.backoff("m", 4.0) == 0.0


def test_a_worker_lost_with_its_node_is_nobody_s_crash() -> None:
    """Its node left the cluster: no back-off before the load elsewhere, no step toward quarantine, and the
    request that was running is not taken for a culprit."""
    g = CrashGuard()
    for t in range(CRASH_LOOP_LIMIT + 1):
        assert crash(g, float(t), ExitKind.LOST, culprit=GenerationParams(prompt="x")) is False
    assert g.check("m", FP) is None and g.backoff("m", float(CRASH_LOOP_LIMIT)) == 0.0
    assert g.culprits.count("m") == 0
