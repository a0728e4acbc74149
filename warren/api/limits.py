"""Request-body size limit (KoboldCpp ``--maxrequestsize``), as a plain ASGI middleware.

Checked before the body is parsed: a declared ``Content-Length`` over the limit is refused at once,
and a chunked body is counted as it arrives, so a client cannot make the server buffer more.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from warren.api.errors import send_error
from warren.errors import BodyTooLarge


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        error = BodyTooLarge(f"the request body is larger than the {self.max_bytes // 2**20} MB limit",
                             hint="raise it with --maxrequestsize")
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await send_error(scope, send, error)
            return
        seen = 0
        exceeded = False

        async def limited() -> Message:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    raise error
            return message

        async def checked_send(message: Message) -> None:
            # The framework turns our exception into its own 400 ("error parsing the body"): once the
            # limit was hit, answer 413 in the dialect's shape instead, and drop what it sends.
            if exceeded:
                if message["type"] == "http.response.start":
                    await send_error(scope, send, error)
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
