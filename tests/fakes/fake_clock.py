"""A ``Clock`` whose time moves only when the test says so (``warren/clock.py``).

``sleep`` parks the caller until ``advance`` moves the time past its deadline. Each sleep is labelled
with the name of the task that sleeps (the pool names its tasks: ``load-<model>``, ``measure-<model>``,
``spare``, ``pool-tick``), so a transcript can say what waits and how long — "the load of crashy waits
0.5 s" — and then let the time pass. Nothing here sleeps for real.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")


@dataclass(eq=False)
class _Sleeper:
    task: str
    deadline: float
    seconds: float
    woken: asyncio.Future[None]


@dataclass
class FakeClock:
    time: float = 1000.0
    jumped: list[tuple[str, float]] = field(default_factory=list)  # what ``drive`` let pass, in order
    _sleepers: list[_Sleeper] = field(default_factory=list)
    _changed: asyncio.Event | None = None

    def now(self) -> float:
        return self.time

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        current = asyncio.current_task()
        sleeper = _Sleeper(current.get_name() if current else "?", self.time + seconds, seconds,
                           asyncio.get_running_loop().create_future())
        self._sleepers.append(sleeper)
        self._notify()
        try:
            await sleeper.woken
        finally:
            if sleeper in self._sleepers:
                self._sleepers.remove(sleeper)

    def sleeping(self, task: str) -> list[float]:
        """The durations of the sleeps pending in tasks whose name starts with ``task``."""
        return [s.seconds for s in self._sleepers if s.task.startswith(task)]

    def advance(self, seconds: float) -> None:
        """Move time on and wake every sleep whose deadline has come (they run at the loop's next turns)."""
        self.time += seconds
        for sleeper in [s for s in self._sleepers if s.deadline <= self.time]:
            self._sleepers.remove(sleeper)
            if not sleeper.woken.done():
                sleeper.woken.set_result(None)

    async def until_sleeping(self, task: str) -> float:
        """Wait until a task whose name starts with ``task`` sleeps; return how long it asked for."""
        while not (pending := self.sleeping(task)):
            self._changed = self._changed or asyncio.Event()
            await self._changed.wait()
        return pending[0]

    async def drive(self, work: Awaitable[T], task: str = "load-") -> T:
        """Await ``work``, letting every sleep of the tasks named ``task…`` pass at once (a crash back-off
        before a load), each recorded in ``jumped``. Other sleeps wait for ``advance`` as usual."""
        done = asyncio.ensure_future(work)
        while not done.done():
            sleeping = asyncio.ensure_future(self.until_sleeping(task))
            await asyncio.wait({done, sleeping}, return_when=asyncio.FIRST_COMPLETED)
            if sleeping.done():
                sleeper = next(s for s in self._sleepers if s.task.startswith(task))
                self.jumped.append((sleeper.task, sleeper.seconds))
                self.advance(sleeper.seconds)
            else:
                sleeping.cancel()
        return done.result()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None
