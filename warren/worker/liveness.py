"""Is a silent worker stopped, hung, or only slow? The heartbeat's verdict, as a pure decision.

The supervisor pings every worker once a second (``WorkerHandle``); the worker's reader thread answers
at once, even mid-decode, because ctypes releases the GIL inside llama.cpp. A missing pong alone
cannot tell apart three very different workers, so the verdict also reads the process's own state
(``ProcessSample``: the state letter and CPU time of ``/proc/PID/stat``):

- **stopped** (SIGSTOP, a debugger): state ``T`` (``t`` for a ptrace stop). It answers nothing until
  someone resumes it, and every request queued behind it waits for nothing. A healthy worker is never
  in that state, so a short silence is proof enough: ``FROZEN`` after ``FROZEN_AFTER``.
- **starved** (other workers, a compiler or a benchmark hold the cores): runnable (``R``), or its CPU
  time still moves between beats. Its reader thread answers as soon as it gets a core; killing it would
  turn load into crashes, so the verdict is ``WAIT``.
- **hung**: sleeping and using no CPU — e.g. native code that waits while holding the GIL, so the
  reader thread can never run. Silent and idle for ``HUNG_AFTER`` → ``HUNG``. A worker that keeps using
  CPU but does not answer for ``BUSY_LIMIT`` is hung too (spinning in native code with the GIL held):
  a starved reader thread needs milliseconds of CPU, not a minute.

Without a way to read the state (``None``: another launcher, no ``/proc``) silence past ``HUNG_AFTER``
is ``HUNG``, a plain timeout. The state comes from the worker's launcher (``WorkerProcess.probe``,
``warren/worker/launcher.py``): the local launcher reads ``/proc/PID/stat`` (``read_proc_stat``); the
tests' in-process launcher reports a state the test sets; a launcher that runs workers elsewhere (Ray,
DESIGN §8) would ask its node.

``Liveness`` keeps one worker's bookkeeping and takes time as a number, so tests are transcripts with
a fake clock (``tests/unit/test_liveness.py``); it does no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

FROZEN_AFTER = 1.5  # s of silence before a stopped process is declared frozen: a ~1 s heartbeat, plus margin
HUNG_AFTER = 10.0  # s silent *and* idle (sleeping, no CPU used): no healthy reader thread sleeps through that
BUSY_LIMIT = 60.0  # s silent while using CPU: a starved reader needs milliseconds of a core, not a minute

STOPPED = frozenset("Tt")  # stopped by a signal; stopped by a tracer
RUNNING = frozenset("RD")  # runnable (maybe waiting for a core); in uninterruptible I/O (the kernel works for it)
GONE = frozenset("ZX")  # exited: the channel's EOF reports it, nothing to kill


class Verdict(enum.StrEnum):
    ALIVE = "alive"  # answered, or not overdue yet
    WAIT = "wait"  # overdue, but running or starved of CPU: give it time
    FROZEN = "frozen"  # stopped: it cannot answer until resumed
    HUNG = "hung"  # silent and idle too long, or silent far too long while busy


@dataclass(frozen=True, slots=True)
class ProcessSample:
    state: str  # the kernel's one-letter state: R S D T t Z X I …
    cpu_ticks: int  # user + system CPU time of all its threads, in clock ticks


ProcessProbe = Callable[[int], ProcessSample | None]


@dataclass(frozen=True, slots=True)
class LivenessRule:
    frozen_after: float = FROZEN_AFTER
    hung_after: float = HUNG_AFTER
    busy_limit: float = BUSY_LIMIT


class Liveness:
    """One worker's heartbeat: ``pinged`` when a Ping goes out, ``ponged`` when any Pong comes back,
    ``judge`` at each beat while a Ping is unanswered."""

    def __init__(self, rule: LivenessRule | None = None) -> None:
        self.rule = rule or LivenessRule()
        self.asked_at: float | None = None  # when the oldest unanswered Ping was sent
        self._cpu: int | None = None  # CPU ticks at the previous judgement of this silence
        self._active_at: float | None = None  # the last judgement of this silence that saw it run

    @property
    def waiting(self) -> bool:
        return self.asked_at is not None

    def silent_for(self, now: float) -> float:
        return 0.0 if self.asked_at is None else now - self.asked_at

    def pinged(self, now: float) -> None:
        if self.asked_at is None:
            self.asked_at = now

    def ponged(self) -> None:
        """Any answer proves the reader thread runs: the silence, and what was seen during it, end."""
        self.asked_at = self._cpu = self._active_at = None

    def judge(self, now: float, sample: ProcessSample | None) -> Verdict:
        if self.asked_at is None:
            return Verdict.ALIVE
        silent = now - self.asked_at
        if sample is not None:
            moved = self._cpu is not None and sample.cpu_ticks > self._cpu
            self._cpu = sample.cpu_ticks
            if moved or sample.state in RUNNING:
                self._active_at = now
        if silent < self.rule.frozen_after:
            return Verdict.ALIVE
        if sample is None:
            return Verdict.HUNG if silent >= self.rule.hung_after else Verdict.WAIT
        if sample.state in STOPPED:
            return Verdict.FROZEN
        if sample.state in GONE:
            return Verdict.WAIT
        if silent >= self.rule.busy_limit:
            return Verdict.HUNG
        idle_for = now - max(self.asked_at, self._active_at if self._active_at is not None else self.asked_at)
        return Verdict.HUNG if idle_for >= self.rule.hung_after else Verdict.WAIT

    def explain(self, verdict: Verdict, now: float, sample: ProcessSample | None) -> str:
        """Why the worker is being killed, in words for the client's error and the log."""
        silent = self.silent_for(now)
        if verdict is Verdict.FROZEN:
            return (f"it was frozen (process state {sample.state if sample else '?'}: stopped by a signal such as "
                    f"SIGSTOP, or by a debugger) and did not answer Ping for {silent:.1f} s")
        if sample is None:
            return f"it did not answer Ping within {self.rule.hung_after:g} s"
        if silent >= self.rule.busy_limit:
            return f"it did not answer Ping within {self.rule.busy_limit:g} s although it was using CPU"
        return (f"it did not answer Ping within {self.rule.hung_after:g} s and used no CPU meanwhile "
                f"(process state {sample.state})")


def parse_stat(text: str) -> ProcessSample:
    """``/proc/PID/stat``: the command name (field 2) may hold spaces and parentheses, so the fields are
    counted from the last ``)``: state is field 3, utime and stime are fields 14 and 15."""
    fields = text[text.rindex(")") + 2:].split()
    return ProcessSample(state=fields[0], cpu_ticks=int(fields[11]) + int(fields[12]))


def read_proc_stat(pid: int) -> ProcessSample | None:
    """The local launcher's probe; ``None`` when the process or ``/proc`` is not there."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return parse_stat(f.read())
    except (OSError, ValueError, IndexError):
        return None
