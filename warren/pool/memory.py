"""Memory measurement: what each model really takes, measured, so the budget stops trusting estimates.

A load reserves its estimate (``warren/gguf/estimate.py``). Once the worker is ready its footprint —
PSS plus GPU memory, as its launcher measures it (``Launcher.measure``) — replaces the reservation in
the policy, and the largest one seen for the entry is what its next load reserves (``Footprints``).

When (``MemoryMeter``):
- **once, ``MEASURE_DELAY`` after a load (or a park)**, when its first requests are done: the kernel's
  walk of the worker's page tables takes a few ms of CPU, which during the first decode (two threads on
  two cores here) delayed the first token of every swap;
- **every ``MEASURE_EVERY`` ticks**, the idle residents (a busy one is using the cores, and its
  footprint is not moving), all in one ``measure`` call: NVML lists every process on every GPU once.

Measuring reads ``/proc`` (and the GPU driver), so it always runs in a thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from warren.catalog import CatalogEntry
from warren.clock import Clock
from warren.pool.state import InstanceState
from warren.pool.tasks import TaskSet
from warren.worker.handle import WorkerHandle
from warren.worker.launcher import Footprint, Launcher

if TYPE_CHECKING:
    from warren.pool.instance import ModelInstance
    from warren.pool.policy import Resident

MEASURE_DELAY = 0.3  # seconds after a load before its first memory measurement (let its first request run)
MEASURE_EVERY = 5  # ticks between measurements of the idle residents
MIB = 1 << 20


class Footprints:
    """Per catalog entry: the largest footprint measured loaded and parked, and the GPU part of the last."""

    def __init__(self) -> None:
        self.loaded: dict[str, int] = {}
        self.parked: dict[str, int] = {}
        self.gpu: dict[str, int] = {}

    def need(self, entry: CatalogEntry) -> int:
        """Bytes to reserve for a load: the last measured footprint of this entry, else its estimate."""
        return self.loaded.get(entry.name) or (entry.estimate.total if entry.estimate else 0)

    def park_need(self, entry: CatalogEntry) -> int:
        """What the entry would keep parked (its largest parked measurement, else the estimate); 0 when its
        weights are not a file mapping, which parking could give back (``warren/worker/parking.py``)."""
        s = entry.settings
        if s is None or not s.use_mmap or s.use_mlock or entry.estimate is None:
            return 0
        return self.parked.get(entry.name) or entry.estimate.parked

    def record(self, model: str, footprint: Footprint, *, parked: bool, state: int = 0) -> bool:
        """Keep a measurement; True when watchers should hear of it (always for a parked one; for a loaded
        one when the largest moved by more than a MiB). ``state``: the saved KV state a parked worker holds,
        which is not what its next park will keep (that depends on its conversation then)."""
        self.gpu[model] = footprint.gpu
        if parked:
            self.parked[model] = max(footprint.total - state, self.parked.get(model, 0))
            return True
        before = self.loaded.get(model, 0)
        self.loaded[model] = max(footprint.total, before)
        return abs(self.loaded[model] - before) > MIB


Record = Callable[[str, Footprint, bool], None]


class MemoryMeter:
    """Decides when to measure which worker, measures in a thread, and hands non-zero results to
    ``record(model, footprint, parked)`` if the worker measured is still the one in place."""

    def __init__(self, launcher: Launcher, clock: Clock, tasks: TaskSet, *, residents: Mapping[str, Resident],
                 instances: Mapping[str, ModelInstance], record: Record) -> None:
        self.launcher = launcher
        self.clock = clock
        self.tasks = tasks
        self.residents = residents
        self.instances = instances
        self.record = record
        self._idle: asyncio.Task[None] | None = None

    def soon(self, model: str, handle: WorkerHandle, *, parked: bool = False) -> None:
        """The first measurement of a new (or newly parked) worker, ``MEASURE_DELAY`` from now. A model
        busy for longer than that is measured by a later tick."""
        self.tasks.spawn(self._soon(model, handle, parked), f"measure-{model}")

    async def _soon(self, model: str, handle: WorkerHandle, parked: bool) -> None:
        await self.clock.sleep(MEASURE_DELAY)
        resident = self.residents.get(model)
        if resident is None or resident.in_flight or not self._current(model, handle, parked):
            return
        assert handle.worker is not None
        footprint = (await asyncio.to_thread(self.launcher.measure, [handle.worker]))[0]
        if footprint.total and self._current(model, handle, parked):
            self.record(model, footprint, parked)

    def idle(self) -> None:
        """Measure every idle resident (one at a time: a measurement still running skips this one)."""
        if self._idle is not None and not self._idle.done():
            return
        chosen: list[tuple[str, WorkerHandle, bool]] = []
        for name, resident in self.residents.items():
            parked = resident.phase is InstanceState.PARKED
            inst = self.instances.get(name)
            if resident.phase in (InstanceState.READY, InstanceState.PARKED) and not resident.in_flight \
                    and inst is not None and inst.handle is not None and self._current(name, inst.handle, parked):
                chosen.append((name, inst.handle, parked))
        if chosen:
            self._idle = self.tasks.spawn(self._measure(chosen), "measure-idle")

    async def _measure(self, chosen: Sequence[tuple[str, WorkerHandle, bool]]) -> None:
        workers = [h.worker for _, h, _ in chosen]  # alive when chosen: each has its worker
        footprints = await asyncio.to_thread(self.launcher.measure, workers)  # type: ignore[arg-type]
        for (model, handle, parked), footprint in zip(chosen, footprints, strict=True):
            if footprint.total and self._current(model, handle, parked):
                self.record(model, footprint, parked)

    def _current(self, model: str, handle: WorkerHandle, parked: bool) -> bool:
        """Whether ``handle`` is still the model's live worker, parked as it was when chosen."""
        inst = self.instances.get(model)
        return inst is not None and inst.handle is handle and handle.alive and inst.parked == parked
