"""Bounded connections: how long a client may take to send a request, and how many are served at once.

uvicorn arms no timer until a first response has been sent: a connection that sends nothing, or sends
its headers a byte at a time, is held for ever, and so is one whose body stalls. Each costs a file
descriptor and some memory, and enough of them starve the server. So:

- **Headers** (``HeaderTimeoutProtocol``): from the moment a connection opens, and again from the first
  byte of each next request on a kept-alive connection, the client has ``--header-timeout`` seconds to
  finish the request's headers; a slower connection is closed (there is nobody to answer yet).
- **Body**: a pause of more than ``--body-timeout`` seconds while the body arrives is a 408 in the
  route's dialect (``warren/api/limits.py``, which also refuses a body over the size limit before it
  is buffered).
- **Concurrency** (``RequestCap``): at most ``--max-connections`` requests are served at once, streams
  included; one more gets a 503 in its dialect at once, with ``Retry-After``. The events stream of the
  dashboard and ``/ping`` are not counted: the first is long-lived by design, the second must answer
  under load. With the body limit this bounds the server's own memory (``docs/reliability.md``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from warren.api.errors import send_error
from warren.errors import Busy

UNCOUNTED = ("/ping", "/api/pool/events")


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request's headers."""

    header_timeout = 10.0  # set from --header-timeout by ``protocol_with``

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_timer: asyncio.TimerHandle | None = None
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._header_timer = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _disarm(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.transport.close()


def protocol_with(header_timeout: float) -> type[HeaderTimeoutProtocol]:
    return type("HeaderTimeoutProtocol", (HeaderTimeoutProtocol,), {"header_timeout": header_timeout})


class RequestCap:
    """ASGI middleware: at most ``limit`` HTTP requests in flight; the next one gets a 503 at once."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNCOUNTED:
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await send_error(scope, send, Busy(f"the server is serving {self.limit} requests, its limit "
                                               "(--max-connections); try again shortly", retry_after=1))
            return
        self.in_flight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1


def server_options(header_timeout: float) -> dict[str, Any]:
    """uvicorn settings: the protocol with the header deadline. uvicorn's own ``limit_concurrency`` is left
    off: it counts connections still sending headers, so slow ones would take the places of real requests
    (a plain-text 503); the deadline closes those instead, and ``RequestCap`` counts requests."""
    return {"http": protocol_with(header_timeout)}
