"""A request that never reached its worker is admitted again, once.

A request waits its turn in ``ModelInstance`` behind the generation that is running. When the worker
it waited for ends meanwhile — a crash, a frozen or hung worker killed by the heartbeat — the request
was never sent: nothing of it ran. ``ModelInstance.generate`` says so with ``RequestNotStarted``
instead of the dead worker's crash, and ``start_generation`` then releases the lease and acquires
the model again: the pool loads a replacement (after the crash back-off) and the request runs there.

- **Once.** A second ``RequestNotStarted`` goes to the client (503, retryable): a model whose workers
  keep dying under their queue is the crash loop's business (quarantine), not a reason to spin here.
- **Names only.** A handle (``name@N``) names one instance; acquiring it again after that instance is
  gone answers ``HandleGone`` (410), so a client never silently lands on another instance.
- The request that *was* running on the worker still fails (``WorkerCrashed``): part of it was sent to
  the client already, and it cannot be resumed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from warren.errors import HandleGone, RequestNotStarted
from warren.params import GenerationParams, GenerationResult
from warren.pool.instance import ModelInstance
from warren.pool.pool import Lease, Pool, split_handle

log = logging.getLogger(__name__)

ATTEMPTS = 2  # the first admission and one re-admission on a replacement worker

Item = str | GenerationResult


@dataclass
class Admitted:
    """A generation that reached its worker: the lease it holds (the caller releases it when the answer is
    complete), the instance and params it runs with, its first item — a stream's first piece, or the whole
    result when not streamed — and the rest."""

    lease: Lease
    instance: ModelInstance
    params: GenerationParams
    first: Item
    rest: AsyncIterator[Item]


async def start_generation(pool: Pool, name: str | None, params_for: Callable[[ModelInstance], GenerationParams], *,
                           stream: bool, abort: asyncio.Event | None = None,
                           on_start: Callable[[], None] | None = None, on_text: Callable[[str], None] | None = None,
                           on_ready: Callable[[ModelInstance], None] | None = None) -> Admitted:
    """Acquire ``name`` (a model, a handle, or None for the active model), build the params for the ready
    instance (``on_ready`` sees it first), and start the generation: its first item is pulled, so an error
    before any output is still an ordinary error. On ``RequestNotStarted``, release and acquire again, once.
    The lease is released here on any failure (cancellation included)."""
    for attempt in range(1, ATTEMPTS + 1):
        lease = await pool.acquire(name)
        try:
            instance = await lease.ready()
            if on_ready is not None:
                on_ready(instance)
            params = params_for(instance)
            params.check()
            gen = instance.generate(params, stream=stream, abort=abort, on_start=on_start, on_text=on_text)
            try:
                first = await anext(gen)
            except BaseException:
                await gen.aclose()
                raise
        except RequestNotStarted as exc:
            lease.release()
            base, generation = split_handle(name or "")
            if generation is not None:
                raise HandleGone(f"handle {base}@{generation} is gone: its worker ended before this request "
                                 "reached it", hint=f"address the model as {base!r} to be served by whichever "
                                 "instance serves it", model=base) from exc
            if attempt == ATTEMPTS:
                raise
            log.warning("request never reached its worker; admitting it again model=%s cause=%s", name,
                        exc.cause.message if exc.cause else "-")
            continue
        except BaseException:
            lease.release()
            raise
        return Admitted(lease, instance, params, first, gen)
    raise AssertionError("unreachable: the last attempt returns or raises")
