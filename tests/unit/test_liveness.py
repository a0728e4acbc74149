"""The heartbeat's verdict as transcripts: pings, pongs and process samples at given times (no processes,
a number for the clock), and the probe that reads ``/proc/PID/stat``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from warren.worker.liveness import (
    BUSY_LIMIT,
    FROZEN_AFTER,
    HUNG_AFTER,
    Liveness,
    ProcessSample,
    Verdict,
    parse_stat,
    read_proc_stat,
)

A, W, F, H = Verdict.ALIVE, Verdict.WAIT, Verdict.FROZEN, Verdict.HUNG


def run(beats: list[tuple[float, ProcessSample | None]], asked_at: float = 0.0) -> list[Verdict]:
    """One Ping sent at ``asked_at`` and never answered; the verdict at each beat."""
    live = Liveness()
    live.pinged(asked_at)
    return [live.judge(t, sample) for t, sample in beats]


def s(state: str, ticks: int = 100) -> ProcessSample:
    return ProcessSample(state, ticks)


def test_the_rule_fits_the_issue() -> None:
    # A stopped worker must be found within 5 s with a 1 s heartbeat: asked at the next beat, judged
    # FROZEN_AFTER later, at a beat: at most 1 + ceil(1.5) = 3 s.
    assert FROZEN_AFTER <= 2.0 and HUNG_AFTER >= 5 * FROZEN_AFTER and BUSY_LIMIT > HUNG_AFTER


def test_an_answered_ping_is_alive_and_a_pong_ends_the_silence() -> None:
    live = Liveness()
    assert live.judge(5.0, None) is A  # nothing asked
    live.pinged(5.0)
    live.pinged(6.0)  # a second ping does not restart the silence
    assert live.silent_for(7.0) == 2.0
    live.ponged()
    assert not live.waiting and live.judge(100.0, s("S")) is A


def test_a_stopped_worker_is_frozen_after_one_and_a_half_seconds() -> None:
    assert run([(1.0, s("T")), (2.0, s("T"))]) == [A, F]
    assert run([(1.0, s("t")), (2.0, s("t"))]) == [A, F]  # a tracer's stop (a debugger)


def test_a_starved_worker_waits_while_it_is_runnable_or_its_cpu_time_moves() -> None:
    # Runnable but given no CPU at all (two busy workers on two cores): never hung before BUSY_LIMIT.
    beats = [(float(t), s("R", 100)) for t in range(1, 60)]
    assert set(run(beats)[1:]) == {W}
    # Sleeping at each look (its threads wait on each other), but using CPU between looks.
    beats = [(float(t), s("S", 100 + t)) for t in range(1, 60)]
    assert set(run(beats)[1:]) == {W}


def test_a_worker_silent_and_busy_for_a_minute_is_hung() -> None:
    beats = [(float(t), s("R", 100 + t)) for t in range(1, 62)]
    verdicts = run(beats)
    assert verdicts.index(H) == int(BUSY_LIMIT) - 1  # the beat at t = 60 s


def test_a_sleeping_worker_that_uses_no_cpu_is_hung_after_ten_seconds() -> None:
    # The wedged engine: native code sleeps with the GIL held, the reader thread cannot answer.
    beats = [(float(t), s("S", 100)) for t in range(1, 12)]
    assert run(beats) == [A] + [W] * 8 + [H, H]  # hung at t = 10 s


def test_idle_time_counts_from_the_last_sign_of_work() -> None:
    beats = [(float(t), s("R", 100 + t)) for t in range(1, 6)] + [(float(t), s("S", 105)) for t in range(6, 17)]
    verdicts = run(beats)
    assert verdicts[:14] == [A] + [W] * 13 and verdicts[14] is H  # worked until t = 5 s: hung at t = 15 s


def test_a_worker_in_uninterruptible_io_waits() -> None:
    beats = [(float(t), s("D", 100)) for t in range(1, 30)]
    assert set(run(beats)[1:]) == {W}


def test_an_exited_worker_is_left_to_the_channel() -> None:
    assert run([(2.0, s("Z")), (20.0, s("Z"))]) == [W, W]


def test_without_a_process_state_silence_is_a_plain_timeout() -> None:
    assert run([(2.0, None), (9.0, None), (10.0, None)]) == [W, W, H]


def test_verdicts_explain_themselves() -> None:
    live = Liveness()
    live.pinged(0.0)
    assert "frozen" in live.explain(F, 2.0, s("T")) and "state T" in live.explain(F, 2.0, s("T"))
    assert "did not answer Ping within 10 s and used no CPU" in live.explain(H, 10.0, s("S"))
    assert "although it was using CPU" in live.explain(H, 60.0, s("R"))


def test_parse_stat_counts_fields_after_the_last_parenthesis() -> None:
    text = "4242 (a) b) (c) S 1 2 3 4 5 6 7 8 9 10 250 30 0 0 20 0 3 0 77 1000 20"
    assert parse_stat(text) == ProcessSample("S", 280)


def test_read_proc_stat_sees_a_stopped_process() -> None:
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("no /proc on this platform")
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        os.kill(child.pid, signal.SIGSTOP)
        os.waitpid(child.pid, os.WUNTRACED)  # returns once the child is stopped
        sample = read_proc_stat(child.pid)
        assert sample is not None and sample.state == "T" and sample.cpu_ticks >= 0
    finally:
        child.kill()
        child.wait()
    assert read_proc_stat(child.pid) is None  # reaped: gone
