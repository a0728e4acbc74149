"""Crash counting, quarantine and restart back-off: what the pool does about workers that die.

Pure bookkeeping, clock-driven: every call takes ``now`` as a number, nothing here awaits or sleeps, so
the rules read as transcripts (``tests/pool/test_crashes.py``). The pool asks ``backoff`` before a load
and sleeps that long on its clock; it asks ``check`` before admitting a request.

- **A crash charged to a request** (``ExitKind.CRASHED`` while a generation ran): the request's
  fingerprints go to ``Culprits`` (``warren/pool/culprits.py``: the same request is refused next time),
  and the crash does not count toward quarantine. Its restart back-off is short (0.25 s · 2ⁿ⁻¹, at most
  2 s), so one client's bad requests cannot hold the model off for everyone.
- **A crash of the model** (idle or loading, ``oom_suspected``, ``hung``, ``frozen``): counted; the next
  load waits 0.5 s · 2ⁿ⁻¹ (at most 30 s) after the last one, and ``CRASH_LOOP_LIMIT`` crashes within
  ``CRASH_WINDOW`` quarantine the model.
- **Not counted**: a worker ``lost`` with its node (``ExitKind.LOST``): neither the model nor the request
  did anything, so there is no back-off and no quarantine; the next load goes to a node that is there.
- **Quarantined at once**: an ``unrunnable`` exit (SIGILL, SIGBUS: this build cannot run here, restarting
  cannot help) and a load the worker refused (``load_failed``).
- A quarantine holds until the catalog entry's fingerprint (its file and settings) changes, or an
  operator loads the model explicitly (``lift``, which also forgets its culprits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from warren.params import GenerationParams
from warren.pool.culprits import Culprits
from warren.worker.launcher import ExitKind

CRASH_WINDOW = 120.0  # crashes older than this are forgotten
CRASH_LOOP_LIMIT = 4  # this many crashes within the window quarantine the model
BACKOFF_BASE, BACKOFF_MAX = 0.5, 30.0  # seconds before restarting after the n-th crash: base * 2**(n-1)
# After crashes charged to requests: short, so one client's bad requests cannot hold the model off for
# everyone, yet a burst of them cannot make the worker restart back to back.
CHARGED_BACKOFF_BASE, CHARGED_BACKOFF_MAX = 0.25, 2.0


@dataclass(frozen=True, slots=True)
class Quarantine:
    fingerprint: tuple[Any, ...]  # the catalog entry's, when it was quarantined: a change lifts it
    reason: str


class CrashGuard:
    def __init__(self, culprits: Culprits | None = None, *, window: float = CRASH_WINDOW,
                 limit: int = CRASH_LOOP_LIMIT) -> None:
        self.culprits = culprits or Culprits()
        self.window = window
        self.limit = limit
        self._quarantine: dict[str, Quarantine] = {}
        self._crashes: dict[str, list[float]] = {}  # the model's own crashes
        self._charged: dict[str, list[float]] = {}  # crashes charged to requests

    def crashed(self, model: str, *, kind: ExitKind, message: str, fingerprint: tuple[Any, ...], now: float,
                culprit: GenerationParams | None = None) -> bool:
        """A worker of ``model`` died by itself. ``culprit``: the generation running when it did. Returns
        whether the crash was charged to that request (else it is the model's, or nobody's: a lost node)."""
        if kind is ExitKind.LOST:
            return False
        if culprit is not None and kind is ExitKind.CRASHED:
            self.culprits.charge(model, culprit, message)
            self._charged[model] = self._recent(self._charged, model, now) + [now]
            return True
        times = self._crashes[model] = self._recent(self._crashes, model, now) + [now]
        if kind is ExitKind.UNRUNNABLE:
            self._quarantine[model] = Quarantine(fingerprint, message)
        elif len(times) >= self.limit:
            self._quarantine[model] = Quarantine(
                fingerprint, f"it crashed {len(times)} times in {self.window:.0f} s (last: {message})")
        return False

    def load_failed(self, model: str, *, fingerprint: tuple[Any, ...], message: str) -> None:
        """The worker refused the model, or could not run at all: another try would fail the same way."""
        self._quarantine[model] = Quarantine(fingerprint, message)

    def check(self, model: str, fingerprint: tuple[Any, ...]) -> Quarantine | None:
        """The model's quarantine, if it still holds; one for an older fingerprint is forgotten (the file
        or the settings changed: worth another try)."""
        q = self._quarantine.get(model)
        if q is not None and q.fingerprint != fingerprint:
            del self._quarantine[model]
            return None
        return q

    def reason(self, model: str) -> str | None:
        """Why the model is quarantined (as last recorded), or None."""
        q = self._quarantine.get(model)
        return q.reason if q else None

    def backoff(self, model: str, now: float) -> float:
        """Seconds to wait before starting ``model`` again: the longer of the two back-offs, counted from
        the last crash of each kind; 0 when it has not crashed lately."""
        delay = 0.0
        for crashes, base, most in ((self._crashes, BACKOFF_BASE, BACKOFF_MAX),
                                    (self._charged, CHARGED_BACKOFF_BASE, CHARGED_BACKOFF_MAX)):
            times = self._recent(crashes, model, now)
            if times:
                delay = max(delay, min(base * 2 ** (len(times) - 1), most) - (now - times[-1]))
        return delay

    def lift(self, model: str) -> None:
        """An operator loads the model explicitly: forget its quarantine, its crashes and its culprits."""
        self._quarantine.pop(model, None)
        self._crashes.pop(model, None)
        self._charged.pop(model, None)
        self.culprits.forget(model)

    def _recent(self, crashes: dict[str, list[float]], model: str, now: float) -> list[float]:
        return [t for t in crashes.get(model, []) if now - t < self.window]
