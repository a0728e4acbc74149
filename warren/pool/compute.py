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
- When more workers generate than there are cores, they take turns: each of the first ones (in turn order)
  gets one core, the others are paused (a share of no threads: the worker waits before its next decode
  step), and every ``quantum`` seconds the turn passes on (round robin). So three models on two cores all
  stream, each about two thirds of the time, instead of one waiting for another's whole story, and the
  machine never runs more compute threads than it has cores (but for the one step a paused worker is
  finishing when its turn ends).

``assign`` is pure (tested with tables); ``ComputeShares`` holds who runs, in which turn order.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

QUANTUM = 0.5  # seconds a worker runs before its turn passes on, when more workers generate than there are cores


@dataclass(frozen=True, slots=True)
class Share:
    threads: int  # 0: paused until its next turn
    cores: tuple[int, ...]


PAUSED = Share(0, ())


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
    split first, then what a worker under its ceiling leaves to the others. With more workers than cores,
    the first ones get a core each and the rest are ``PAUSED`` (their turn comes, ``ComputeShares``)."""
    names = list(ceilings)
    if len(names) > len(cores):
        return {name: Share(1, (cores[i],)) if i < len(cores) else PAUSED for i, name in enumerate(names)}
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
    """Who is generating, on which cores, in which turn order. One per pool."""

    def __init__(self, cores: list[int] | None = None, quantum: float = QUANTUM) -> None:
        self.cores = cores if cores is not None else usable_cores()
        self.quantum = quantum
        self.running: dict[str, int] = {}  # worker key -> ceiling, in turn order
        self.shares: dict[str, Share] = {}  # the current assignment of every running worker
        self._tell: dict[str, Callable[[Share], None]] = {}
        self._turn: asyncio.TimerHandle | None = None  # the next passing of turns, while they are taken
        self.idle = asyncio.Event()  # set while no worker generates (the warm spare waits for it)
        self.idle.set()

    @contextlib.asynccontextmanager
    async def running_on(self, key: str, ceiling: int, tell: Callable[[Share], None]) -> AsyncIterator[Share]:
        """Hold a share of the cores while the block runs (a generation). ``tell`` sends a share to the worker:
        it is called for this worker before the block starts (maybe ``PAUSED``: the worker then waits for its
        turn before decoding) and again whenever its share changes while others come and go or turns pass."""
        self.running[key] = ceiling
        self._tell[key] = tell
        self.idle.clear()
        self._reassign()
        try:
            yield self.shares[key]
        finally:
            del self.running[key]
            del self._tell[key]
            self.shares.pop(key, None)
            self._reassign()
            if not self.running:
                self.idle.set()

    def _pass_turn(self) -> None:
        """The worker that has run longest goes to the back of the turn order."""
        self._turn = None
        if self.running:
            first = next(iter(self.running))
            self.running[first] = self.running.pop(first)
            self._reassign()

    def _reassign(self) -> None:
        new = assign(self.cores, self.running)
        changed = [key for key, share in new.items() if self.shares.get(key) != share]
        # Those giving cores up hear it first: their threads leave the cores before the others' arrive.
        changed.sort(key=lambda key: new[key].threads >= (self.shares[key].threads if key in self.shares else 0))
        for key in changed:
            self._tell[key](new[key])
        self.shares = new
        if len(self.running) > len(self.cores) and self._turn is None:
            self._turn = asyncio.get_running_loop().call_later(self.quantum, self._pass_turn)
        elif len(self.running) <= len(self.cores) and self._turn is not None:
            self._turn.cancel()
            self._turn = None
