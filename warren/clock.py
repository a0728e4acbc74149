"""Time as the pool sees it: a ``Clock`` to read and to sleep on, so tests can replace it.

The pool waits in four places — the crash back-off, the warm spare's delay, the first memory
measurement's delay and its tick — and reads the time for keep-alives and deadlines. All of it goes
through one ``Clock``: in production ``MonotonicClock`` (``time.monotonic`` and ``asyncio.sleep``); in
tests ``tests/fakes/fake_clock.py``, where time moves only when the test says so, so a 30 s back-off or a
5-minute keep-alive is a transcript that runs in microseconds (trio's ``MockClock`` idea).

What the clock does not cover, on purpose: a worker's heartbeat and its request timeouts
(``warren/worker/handle.py``) measure a real process answering in real time, and ``time.perf_counter``
durations that are reported, not waited for (load seconds).
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock."""


class MonotonicClock:
    """The real clock."""

    def now(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
