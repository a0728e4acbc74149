"""Request bodies: a size limit and a pace, as a plain ASGI middleware, before anything is parsed.

- **Size.** The limit is ``--maxrequestsize`` (KoboldCpp's), lowered to what the largest context in the
  catalog could use as a prompt (``Pool.body_limit``): a body that could never be a prompt is refused
  before it is buffered. A declared ``Content-Length`` over the limit is refused at once (413); a
  chunked body is counted as it arrives, so a client cannot make the server buffer more.
- **Pace.** While the body arrives, a pause longer than ``--body-timeout`` ends the request with a 408:
  a client trickling its body cannot hold a request slot for ever.

Both answer in the route's dialect. Once the body is complete, ``receive`` is passed through untouched
(the serving path waits on it for the client's disconnect).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from warren.api.errors import send_error
from warren.errors import BodyTooLarge, RequestTimeout, WarrenError


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: Callable[[], int], idle_timeout: float = 30.0) -> None:
        self.app = app
        self.limit = limit
        self.idle_timeout = idle_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.limit()
        shown = f"{max_bytes / 2**20:.1f} MB" if max_bytes < 10 * 2**20 else f"{max_bytes // 2**20} MB"
        too_large = BodyTooLarge(f"the request body is larger than the {shown} limit",
                                 hint="a prompt cannot be larger than the model's context; --maxrequestsize "
                                      "caps it further")
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            await send_error(scope, send, too_large)
            return
        seen = 0
        complete = scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE") and declared in (None, b"0")
        failure: WarrenError | None = None

        async def limited() -> Message:
            nonlocal seen, complete, failure
            if complete:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.idle_timeout)
            except TimeoutError:
                failure = RequestTimeout(f"the request body stalled for more than {self.idle_timeout:g} s",
                                         hint="send the body at once (--body-timeout)")
                raise failure from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    failure = too_large
                    raise too_large
                complete = not message.get("more_body", False)
            return message

        async def checked_send(message: Message) -> None:
            # The framework turns our exception into its own 400 ("error parsing the body"): once a limit
            # was hit, answer in the dialect's shape instead, and drop what it sends.
            if failure is not None:
                if message["type"] == "http.response.start":
                    await send_error(scope, send, failure)
                return
            await send(message)

        await self.app(scope, limited, checked_send)


class JsonBodies:
    """KoboldCpp reads every POST body as JSON whatever its Content-Type (``curl -d`` sends form
    encoding, some clients send text/plain). Tell FastAPI the body is JSON so those clients work;
    a body that is not JSON still gets a clear 400."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            headers.append((b"content-type", b"application/json"))
            scope = {**scope, "headers": headers}
        await self.app(scope, receive, send)
