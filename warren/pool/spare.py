"""The warm spare: one worker started ahead of need, so a load pays for the model and not the process.

A worker's start — interpreter, imports, llama-cpp-python — takes ~0.3 s of a core; the model load
after it ~0.1 s for the default model. So after each load the pool starts one worker that has imported
its engine and loaded nothing, and the next load adopts it (``take``).

- **Later, not now.** It starts ``SPARE_DELAY`` after the load that asked for it, and then only once no
  worker is generating (``ComputeShares.idle``; at most ``IDLE_WAIT`` later): its start takes a core for
  ~0.4 s, and on a 2-core machine a generation beside it takes about twice as long (a scripted chat, the
  20-token turn after a swap: 434-458 ms with the spare starting beside it, 199-225 ms without). Waiting for
  no generation moves the start into the time between requests; a client that sends its next request at
  once still meets it on that request (419-444 ms, once).
- **Inside the budget.** It starts only when the budget has room for an idle worker
  (``WORKER_BASE_BYTES``); it is not reserved, since the load that adopts it counts it in its own
  reservation, and the status shows its measured size as ``spare``. When the reservations leave no room
  for it any more (a resume, which does not adopt it; a measurement above the estimate), ``trim`` stops
  it, so the budget holds the spare too.
- **One engine.** It is started with the launcher's ``default_engine`` (llama.cpp locally); a load with
  another engine starts cold.
- A load that finds the spare still waiting for its delay cancels it and starts cold at once; one that
  finds it starting waits for it (a spare on its way beats a cold start).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from warren.clock import Clock
from warren.errors import WarrenError
from warren.gguf.estimate import WORKER_BASE_BYTES
from warren.pool.tasks import TaskSet
from warren.settings import ModelSettings
from warren.worker.handle import WorkerHandle
from warren.worker.launcher import Launcher

log = logging.getLogger(__name__)

SPARE_DELAY = 0.2  # seconds after a load before the next warm spare starts (let its first request run)
IDLE_WAIT = 30.0  # seconds the spare waits at most for no worker to be generating, then starts anyway


class WarmSpare:
    def __init__(self, launcher: Launcher, clock: Clock, tasks: TaskSet, *, enabled: bool, heartbeat: bool,
                 room: Callable[[], int], idle: asyncio.Event | None = None) -> None:
        """``room``: bytes of the budget not reserved now; ``idle``: set while no worker generates."""
        self.launcher = launcher
        self.clock = clock
        self.tasks = tasks
        self.enabled = enabled
        self.heartbeat = heartbeat
        self.room = room
        self.idle = idle
        self.handle: WorkerHandle | None = None  # the idle worker, once started
        self.task: asyncio.Task[None] | None = None  # the one starting it
        self.measured = 0  # its footprint, measured when it started
        self._starting = False  # past the delay: its worker is on its way
        self.waiting_for_idle = False  # past the delay, waiting for no worker to be generating

    @property
    def bytes(self) -> int:
        """What the spare holds now (0 without one): the status shows it."""
        return self.measured if self.handle is not None else 0

    def ensure(self) -> None:
        """Start a spare (after the delay) unless there is one, or one on its way, or spares are off."""
        if not self.enabled or self.handle is not None or (self.task and not self.task.done()):
            return
        self._starting = False
        self.task = self.tasks.spawn(self._start(), "spare")

    async def _start(self) -> None:
        await self.clock.sleep(SPARE_DELAY)
        if self.idle is not None and not self.idle.is_set():
            self.waiting_for_idle = True
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.idle.wait(), IDLE_WAIT)
            finally:
                self.waiting_for_idle = False
        if self.room() < WORKER_BASE_BYTES:
            return  # no room in the budget for an idle worker: loads start cold instead
        self._starting = True
        handle = WorkerHandle(ModelSettings(name="spare", path=Path("/dev/null"), engine=self.launcher.default_engine),
                              launcher=self.launcher, heartbeat=self.heartbeat)
        try:
            await handle.start()
        except WarrenError as exc:
            log.warning("warm spare worker did not start error=%s", exc.message)
            return
        assert handle.worker is not None
        self.measured = (await asyncio.to_thread(self.launcher.measure, [handle.worker]))[0].total
        self.handle = handle

    def trim(self) -> None:
        """Stop the spare when the reservations no longer leave room for it."""
        spare = self.handle
        if spare is not None and self.room() < self.measured:
            log.info("stopping the warm spare: the budget has no room left for it")
            self.handle = None
            self.tasks.spawn(spare.stop(), "spare-stop")

    async def take(self, settings: ModelSettings) -> WorkerHandle | None:
        """The spare for a load with ``settings``, or None (start cold)."""
        if settings.engine != self.launcher.default_engine or not self.enabled:
            return None
        task = self.task
        if self.handle is None and task is not None and not task.done():
            if self._starting:
                await asyncio.shield(task)  # a spare already on its way beats a cold start
            else:
                task.cancel()  # still waiting to start: start the worker for this load right away
        spare, self.handle = self.handle, None
        if spare is not None and not spare.alive:
            self.tasks.spawn(spare.stop(), "spare-stop")
            return None
        return spare

    async def close(self) -> None:
        if self.handle is not None:
            await self.handle.stop()
