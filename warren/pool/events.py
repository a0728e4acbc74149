"""A small publish/subscribe bus for pool state changes (``GET /api/pool/events`` streams it).

Subscribers get bounded queues: a client too slow to read loses the oldest events, never blocks
the pool. Each event is a plain dict with a ``type`` and a monotonically increasing ``seq``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

QUEUE_SIZE = 256  # events a subscriber may fall behind before the oldest are dropped


class EventBus:
    def __init__(self) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._seq = itertools.count(1)

    @property
    def listened(self) -> bool:
        """Whether anyone subscribes: publishers skip building events nobody will read."""
        return bool(self._subscribers)

    def publish(self, event_type: str, **data: Any) -> None:
        event = {"type": event_type, "seq": next(self._seq), **data}
        for queue in self._subscribers:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)
