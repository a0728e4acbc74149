"""The cores, shared out among the workers that are generating: the pool schedules compute as it does memory.

Why: llama.cpp's CPU threads wait for each other at every operation of the graph. Two workers that each
run as many threads as there are cores do not share the machine, they fight over it: on 2 cores two such
workers decoding at once ran 9x slower each (``docs/benchmarks.md``). So at any moment the compute threads
of all generating workers fit the cores this process may use:

- ``usable_cores()``: the CPUs in this process's affinity mask, cut to the cgroup's CPU quota.
- A worker whose generation starts asks for a share (``ComputeShares.running``); the cores are divided
  among the generating workers, each getting at most its ceiling (``--threads``, or for a model offloaded
  to a GPU one thread: its GPU does the work, the CPU only feeds it). A worker generating alone gets
  them all. Each share is a number of threads *and* the cores to run them on, disjoint from the others',
  sent to the worker (``SetThreads``), which applies it before its next decode step
  (``llama_set_n_threads`` and the threads' CPU affinity).
- When more workers want to generate than there are cores, the later ones wait their turn (first come,
  first served) instead of running a thread each on an oversubscribed machine.

``assign`` is pure (tested with tables); ``ComputeShares`` holds who runs and who waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Share:
    threads: int
    cores: tuple[int, ...]


def usable_cores(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> list[int]:
    """The CPUs this process may run on, no more than its cgroup's quota allows (``cpu.max``: "max 100000"
    or "150000 100000" = 1.5 CPUs, rounded down, at least one)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    try:
        quota, period = cgroup.read_text().split()[:2]
        if quota != "max":
            cores = cores[: max(1, math.floor(int(quota) / int(period)))]
    except (OSError, ValueError):
        pass
    return cores


def assign(cores: list[int], ceilings: dict[str, int]) -> dict[str, Share]:
    """Divide ``cores`` among the generating workers (in the order given), none over its ceiling: an even
    split first, then what a worker under its ceiling leaves to the others. Every worker gets at least one
    core as long as there are as many cores as workers (``ComputeShares`` makes sure there are)."""
    names = list(ceilings)
    counts = dict.fromkeys(names, 0)
    left = len(cores)
    while left > 0:
        hungry = [n for n in names if counts[n] < max(1, ceilings[n])]
        if not hungry:
            break
        for name in hungry:
            if left == 0:
                break
            counts[name] += 1
            left -= 1
    shares, start = {}, 0
    for name in names:
        shares[name] = Share(counts[name], tuple(cores[start : start + counts[name]]))
        start += counts[name]
    return shares


class ComputeShares:
    """Who is generating, on which cores; who waits for a core. One per pool."""

    def __init__(self, cores: list[int] | None = None) -> None:
        self.cores = cores if cores is not None else usable_cores()
        self.running: dict[str, int] = {}  # worker key -> ceiling, in order of arrival
        self.shares: dict[str, Share] = {}  # the current assignment of every running worker
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._tell: dict[str, Callable[[Share], None]] = {}

    @contextlib.asynccontextmanager
    async def running_on(self, key: str, ceiling: int, tell: Callable[[Share], None]) -> AsyncIterator[Share]:
        """Hold a share of the cores while the block runs (a generation). ``tell`` sends a share to the worker:
        it is called for this worker before the block starts and again for every running worker whose share
        changes while others come and go."""
        if len(self.running) >= len(self.cores) or self._waiting:
            turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiting.append(turn)
            try:
                await turn
            except BaseException:
                if turn in self._waiting:
                    self._waiting.remove(turn)
                elif turn.done() and not turn.cancelled():
                    self._wake()  # the turn it was given passes to the next
                raise
        self.running[key] = ceiling
        self._tell[key] = tell
        self._reassign()
        try:
            yield self.shares[key]
        finally:
            del self.running[key]
            del self._tell[key]
            self.shares.pop(key, None)
            self._reassign()
            self._wake()

    def _wake(self) -> None:
        while self._waiting and len(self.running) < len(self.cores):
            turn = self._waiting.popleft()
            if not turn.done():
                turn.set_result(None)
                return

    def _reassign(self) -> None:
        new = assign(self.cores, self.running)
        for key, share in new.items():
            if self.shares.get(key) != share:
                self._tell[key](share)
        self.shares = new
