"""Running a generation behind an HTTP response, shared by every dialect.

``start_generation`` pulls the first item before any byte is sent, so everything that can fail up
front — queue full, unknown model, load failure, bad grammar — is still an ordinary HTTP error with
the right status. Once streaming has begun, a failure can only be told in-band: ``stream_events``
hands it to the dialect's ``on_error`` to write as its own error event, then ends the stream.
Leaving early (client gone) closes the generator chain, which cancels the work in the worker.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

from warren.errors import WarrenError
from warren.params import GenerationParams, GenerationResult
from warren.pool.instance import ModelInstance

log = logging.getLogger(__name__)

Item = str | GenerationResult


async def start_generation(instance: ModelInstance, params: GenerationParams, *, stream: bool,
                           genkey: str = "") -> tuple[Item, AsyncIterator[Item]]:
    gen = instance.generate(params, stream=stream, genkey=genkey)
    try:
        first = await anext(gen)
    except BaseException:
        await gen.aclose()
        raise
    return first, gen


async def stream_events(first: Item, rest: AsyncIterator[Item], on_item: Callable[[Item], list[bytes]],
                        on_error: Callable[[WarrenError], list[bytes]],
                        on_close: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
    try:
        for chunk in on_item(first):
            yield chunk
        async for item in rest:
            for chunk in on_item(item):
                yield chunk
    except WarrenError as exc:
        log.warning("stream failed error=%s", exc.message)
        for chunk in on_error(exc):
            yield chunk
    finally:
        try:
            await rest.aclose()  # type: ignore[attr-defined]
        finally:
            if on_close is not None:
                on_close()  # e.g. the pool lease: the model is no longer in use by this request
