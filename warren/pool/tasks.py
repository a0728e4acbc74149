"""The pool's background tasks: every one has an owner, and none fails silently.

Loads, stops, parks, measurements and the warm spare run as tasks the pool starts and does not await
where it starts them (an ``Effects`` call is synchronous). A ``TaskSet`` keeps them, so shutdown can
cancel them all. A task that fails with anything but a ``WarrenError`` (which its awaiter reports) is
logged, never lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from warren.errors import WarrenError

log = logging.getLogger(__name__)


class TaskSet:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None and not isinstance(task.exception(), WarrenError):
            log.error("pool task failed task=%s", task.get_name(), exc_info=task.exception())

    async def cancel_all(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
