"""A request's hold on a model, and the names requests use for models.

``Pool.acquire`` admits a request and returns a ``Lease``: ``ready()`` waits for the model's load (or
resume), and ``release()`` tells the policy the request is over — what keeps a busy instance from being
evicted or expiring under it. Every lease is released exactly once, however the request ends.

Names: a model (``smol``), KoboldCpp's ``koboldcpp/smol``, or a handle ``smol@3`` naming exactly that
instance (``split_handle``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from warren.errors import ModelNotFound
from warren.pool.instance import ModelInstance
from warren.pool.policy import Resident
from warren.pool.state import InstanceState

if TYPE_CHECKING:
    from warren.pool.pool import Pool


def split_handle(name: str) -> tuple[str, int | None]:
    """``smol@3`` -> ("smol", 3); ``koboldcpp/smol`` -> ("smol", None); ``@3`` is neither: ``ModelNotFound``."""
    name = name.removeprefix("koboldcpp/")
    base, sep, gen = name.rpartition("@")
    if sep and gen.isdigit():
        if not base:
            raise ModelNotFound(f"{name!r} names no model", hint="a handle is NAME@GENERATION, e.g. smol@1")
        return base, int(gen)
    if not name:
        raise ModelNotFound("no model named", hint="give a model name, or leave it out for the active model")
    return name, None


class Lease:
    """One admitted request on one model. ``release()`` is idempotent and must always be called.

    It counts on the policy's ``Resident`` it was granted on: when that instance is gone (a crash) and a
    new one was admitted meanwhile, releasing an old lease must not take a request off the new count,
    or the new instance could be evicted under a running request."""

    def __init__(self, pool: Pool, instance: ModelInstance, resident: Resident | None = None) -> None:
        self.pool = pool
        self.instance = instance
        self.resident = resident
        self._released = False

    async def ready(self) -> ModelInstance:
        inst = self.instance
        if not (inst.state is InstanceState.READY and inst.handle is not None and inst.handle.alive):
            task = self.pool.load_task(inst.name)
            if task is not None:
                await asyncio.shield(task)
            inst.require_ready()
        return inst

    def release(self) -> None:
        if not self._released:
            self._released = True
            current = self.pool.policy.residents.get(self.instance.name)
            if self.resident is None or current is self.resident:
                self.pool.policy.released(self.instance.name, self.pool.clock.now())
            self.pool.view.publish(self.instance, "usage")

    async def __aenter__(self) -> ModelInstance:
        try:
            return await self.ready()
        except BaseException:
            self.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.release()
