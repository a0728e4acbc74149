"""The one serving path of a generation, shared by every dialect: the model's lease, the generation,
streaming, a client that leaves, and shutdown.

Each dialect only translates: its route builds ``GenerationParams`` from the instance it is given and
turns results into its own bodies. Everything between is here, once:

- **Admission.** ``pool.acquire`` (which may load the model, evict idle ones or wait for room) →
  ``lease.ready()`` → the dialect's ``params_for(instance)`` → the generation. The lease is released
  exactly once, when the answer is complete or the stream has ended.
- **A client that leaves is forgotten wherever its request is.** Until the answer starts, the request
  is raced against the client's ``http.disconnect`` (uvicorn does not cancel a handler whose client
  left): a disconnect cancels the work — waiting for room (the policy forgets the waiter), queued behind
  another request, or generating (the worker gets ``Cancel``). Once a stream has started, Starlette's
  ``StreamingResponse`` listens for the disconnect itself and closes the body, which cancels the same way.
- **Shutdown** (``Serving.drain``, on SIGTERM): requests that have not started end at once with
  ``ServerStopping`` in their dialect; running ones get ``DRAIN_GRACE`` seconds to finish and are then
  aborted, a stream ending with its dialect's error event, never cut off mid-line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse

from warren.api.errors import redacted
from warren.errors import ClientGone, ServerStopping, WarrenError
from warren.grammar import Constraints, vet_request
from warren.params import GenerationParams, GenerationResult
from warren.pool.instance import ModelInstance
from warren.pool.pool import Lease, Pool
from warren.pool.retry import start_generation

log = logging.getLogger(__name__)

DRAIN_GRACE = 10.0  # seconds running generations get to finish after SIGTERM

Item = str | GenerationResult
T = TypeVar("T")


@dataclass(eq=False)
class Attempt:
    """One request in flight: its work task until the answer starts, and the abort event of its generation."""

    task: asyncio.Task[Any] | None = None
    abort: asyncio.Event = field(default_factory=asyncio.Event)
    started: bool = False  # its turn came: shutdown lets it finish within the grace (until then it is cancelled)
    stopping: bool = False  # shutdown ended it
    on_end: Callable[[], None] | None = None  # told once when the request is over

    def mark_started(self) -> None:
        self.started = True


class Serving:
    """The requests in flight, so that shutdown can reach them. One per app (``app.state.serving``)."""

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.attempts: set[Attempt] = set()
        self.draining = False
        self._drain_task: asyncio.Task[None] | None = None

    def finish(self, attempt: Attempt) -> None:
        """The request is over (answered, failed, or its stream closed): once per attempt."""
        if attempt in self.attempts:
            self.attempts.discard(attempt)
            if attempt.on_end is not None:
                attempt.on_end()

    def drain(self, grace: float = DRAIN_GRACE) -> None:
        """Begin shutdown: refuse what waits, and give what runs ``grace`` seconds. Called from the event
        loop (the signal handler only schedules it)."""
        if self.draining:
            return
        self.draining = True
        log.info("shutting down: %d requests in flight, grace %.0f s", len(self.attempts), grace)
        self.pool.begin_shutdown()
        for attempt in list(self.attempts):
            if not attempt.started:
                self._stop(attempt)
        self._drain_task = asyncio.get_running_loop().create_task(self._abort_after(grace), name="drain")

    async def _abort_after(self, grace: float) -> None:
        await asyncio.sleep(grace)
        for attempt in list(self.attempts):
            self._stop(attempt)

    @staticmethod
    def _stop(attempt: Attempt) -> None:
        attempt.stopping = True
        attempt.abort.set()  # a running generation ends with finish reason "abort", in-band
        if attempt.task is not None and not attempt.started:
            attempt.task.cancel()  # waiting for room, a load or its turn: it ends now


def serving_of(request: Request) -> Serving:
    serving: Serving = request.app.state.serving
    return serving


async def _client_gone(request: Request) -> None:
    """Returns when the client disconnects. The body has been read by now, so the next message on the
    request's channel is the disconnect (uvicorn sends nothing else)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _until_answered(request: Request, attempt: Attempt, work: Awaitable[T]) -> T:
    """Run ``work`` while watching the client and shutdown; cancel it when either ends the request."""
    task: asyncio.Task[T] = asyncio.ensure_future(work)
    attempt.task = task
    gone = asyncio.ensure_future(_client_gone(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        gone.cancel()
    if not task.done():  # the client left first
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, WarrenError):
            await task
        raise ClientGone("the client disconnected; its request was cancelled")
    if task.cancelled():
        if attempt.stopping:
            raise ServerStopping()
        raise asyncio.CancelledError
    return task.result()


@dataclass
class Started:
    """A generation that has started: what the dialect needs to write its answer."""

    instance: ModelInstance
    params: GenerationParams
    load_seconds: float  # waiting for the model (load, room): Ollama reports it
    began: float  # time.perf_counter() when the request was admitted
    first: Item | None = None  # streams: the first item, already produced
    rest: AsyncIterator[Item] | None = None
    result: GenerationResult | None = None  # non-streamed: the whole result
    lease: Lease | None = None
    attempt: Attempt | None = None
    serving: Serving | None = None

    def response(self, on_item: Callable[[Item], list[bytes]], on_error: Callable[[WarrenError], list[bytes]], *,
                 media_type: str, headers: dict[str, str] | None = None, head: list[bytes] | None = None
                 ) -> StreamingResponse:
        """The stream as an HTTP response: ``head``, then each item as the dialect writes it; a failure, or
        shutdown, becomes the dialect's error event. A client that leaves cancels the generation, and the
        lease is released when the response ends, however it ends — also when the client left before
        the body was ever iterated (Starlette then never starts it)."""
        return _GenerationResponse(self, self._events(on_item, on_error, head or []), media_type=media_type,
                                   headers=headers)

    async def _events(self, on_item: Callable[[Item], list[bytes]], on_error: Callable[[WarrenError], list[bytes]],
                      head: list[bytes]) -> AsyncIterator[bytes]:
        assert self.rest is not None and self.first is not None
        try:
            for chunk in head:
                yield chunk
            item: Item = self.first
            while True:
                if isinstance(item, GenerationResult) and self.attempt is not None and self.attempt.stopping:
                    raise ServerStopping("the server is shutting down; the generation was cut short")
                for chunk in on_item(item):
                    yield chunk
                if isinstance(item, GenerationResult):
                    return
                item = await anext(self.rest)
        except WarrenError as exc:
            log.warning("stream failed error=%s", exc.message)
            catalog = self.serving.pool.catalog if self.serving is not None else None
            for chunk in on_error(redacted(exc, catalog.redact) if catalog is not None else exc):
                yield chunk
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        try:
            if self.rest is not None:
                await self.rest.aclose()  # type: ignore[attr-defined]
        finally:
            self.close()

    def close(self) -> None:
        if self.lease is not None:
            self.lease.release()
        if self.serving is not None and self.attempt is not None:
            self.serving.finish(self.attempt)


class _GenerationResponse(StreamingResponse):
    def __init__(self, started: Started, content: AsyncIterator[bytes], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._started = started

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._started.aclose()


ParamsFor = Callable[[ModelInstance], GenerationParams]


async def generate(request: Request, model: str | None, params_for: ParamsFor, *, stream: bool,
                   constraints: Constraints | None = None, abort: asyncio.Event | None = None,
                   on_ready: Callable[[ModelInstance], None] | None = None,
                   on_start: Callable[[], None] | None = None, on_text: Callable[[str], None] | None = None,
                   on_end: Callable[[], None] | None = None) -> Started:
    """Admit a generation on ``model`` (a name, a handle, or None for the active model) and start it.

    Not streamed: returns when the whole result is there (``Started.result``), the lease released. Streamed:
    returns once the first item is there (so an error up front is still an ordinary HTTP error), and the
    caller hands ``Started.events(...)`` to a ``StreamingResponse``, which releases the lease at its end.
    ``constraints`` (a grammar or JSON schema) are checked first, off the event loop: a hostile one never
    gets a model loaded. A dialect's own rules hang on the hooks: ``abort`` (an event that ends the
    generation; KoboldCpp's abort by genkey), ``on_ready`` (the instance, before the generation: Ollama's
    keep-alive), ``on_start`` (its turn came), ``on_text`` (every piece of text, streamed or not), ``on_end``
    (the request is over, however it ended)."""
    serving = serving_of(request)
    if serving.draining:
        raise ServerStopping()
    if constraints is not None:
        await vet_request(constraints)
    attempt = Attempt(abort=abort or asyncio.Event(), on_end=on_end)
    serving.attempts.add(attempt)
    began = time.perf_counter()
    ready_at = began

    def started_now() -> None:
        attempt.mark_started()
        if on_start is not None:
            on_start()

    def ready(instance: ModelInstance) -> None:
        nonlocal ready_at
        ready_at = time.perf_counter()
        if on_ready is not None:
            on_ready(instance)

    async def admitted() -> Started:
        a = await start_generation(serving.pool, model, params_for, stream=stream, abort=attempt.abort,
                                   on_start=started_now, on_text=on_text, on_ready=ready)
        started = Started(a.instance, a.params, ready_at - began, began, lease=a.lease, attempt=attempt,
                          serving=serving)
        if stream:
            started.first, started.rest = a.first, a.rest
        else:
            assert isinstance(a.first, GenerationResult)
            started.result = a.first
            await a.rest.aclose()  # type: ignore[attr-defined]
        return started

    try:
        started = await _until_answered(request, attempt, admitted())
    except BaseException:
        serving.finish(attempt)
        raise
    if not stream:
        started.close()
        if attempt.stopping:
            raise ServerStopping("the server is shutting down; the generation was cut short")
    return started


async def with_model(request: Request, model: str | None, work: Callable[[ModelInstance], Awaitable[T]], *,
                     on_ready: Callable[[ModelInstance], None] | None = None) -> tuple[ModelInstance, T, float]:
    """``work`` on ``model``'s instance (loaded on demand), under the model's lease, watching the client and
    shutdown as a generation does: a client that leaves, or shutdown before the work began, cancels it where it
    is. Returns the instance, the work's result and the seconds spent waiting for the model (a load, room)."""
    serving = serving_of(request)
    if serving.draining:
        raise ServerStopping()
    attempt = Attempt()
    serving.attempts.add(attempt)
    began = time.perf_counter()
    waited = 0.0

    async def run() -> tuple[ModelInstance, T]:
        nonlocal waited
        async with await serving.pool.acquire(model) as instance:
            waited = time.perf_counter() - began
            if on_ready is not None:
                on_ready(instance)
            attempt.mark_started()
            return instance, await work(instance)

    try:
        instance, result = await _until_answered(request, attempt, run())
    finally:
        serving.finish(attempt)
    return instance, result, waited


async def admit(request: Request, model: str | None) -> tuple[ModelInstance, float]:
    """Only load ``model`` (Ollama's empty request), watching the client and shutdown the same way.
    Returns the instance and the seconds it took; the lease is already released."""
    began = time.perf_counter()

    async def nothing(instance: ModelInstance) -> None:
        return None

    instance, _, _ = await with_model(request, model, nothing)
    return instance, time.perf_counter() - began
