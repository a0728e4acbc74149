"""What a web browser may do to the operator's routes: the defence against CSRF and DNS rebinding.

A page on any site can make the user's browser send a *simple* request (a POST with ``text/plain``, no
preflight) to ``http://127.0.0.1:5001``; warren reads every POST body as JSON (KoboldCpp does), so such
a request would be executed, even though CORS stops the page from reading the answer. And a page
whose DNS name is re-pointed at 127.0.0.1 (DNS rebinding) talks to the server as a "same-origin" page,
with a ``Host`` header naming the attacker's domain. On a loopback server without an admin password,
that would hand the pool API to any web page. So, for the operator's routes (``is_operator_route``):

- **Host**: a server that listens only on loopback answers them only for a loopback ``Host``
  (``localhost``, ``*.localhost``, ``127.0.0.0/8``, ``[::1]``): a rebinding name is refused.
- **Origin**: a state-changing request (not GET/HEAD/OPTIONS) that a browser marks as coming from
  another origin (``Origin`` other than the server's own, ``Origin: null``, or ``Sec-Fetch-Site:
  cross-site``) is refused, unless it carries the admin key: a page cannot attach that on its own, so
  a keyed cross-origin call is a deliberate client, not a forgery.
- **CORS**: these routes never get ``Access-Control-Allow-Origin: *``; only origins the operator named
  with ``--cors-origins`` get CORS headers on them. Every other route keeps KoboldCpp's open CORS (its
  browser UIs, such as KoboldAI Lite, are often served from elsewhere).

Refusals are 403 in the route's dialect. Clients that are not browsers (curl, SDKs) send no ``Origin``
and are unaffected; the dashboard is same-origin.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from warren.api.errors import is_operator_route, send_error
from warren.errors import Forbidden

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def is_loopback(host: str) -> bool:
    """A loopback address or name (``localhost`` and its subdomains, RFC 6761)."""
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(host_header: str) -> str:
    """``127.0.0.1:5001`` → ``127.0.0.1``; ``[::1]:5001`` → ``::1``."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


class BrowserGuard:
    """ASGI middleware: the Host and Origin checks on the operator's routes, and CORS scoped by route."""

    def __init__(self, app: ASGIApp, *, loopback_only: bool, cors_origins: tuple[str, ...],
                 has_admin_key: Callable[[Headers], bool]) -> None:
        self.app = app
        self.loopback_only = loopback_only
        self.has_admin_key = has_admin_key
        open_origins = list(cors_origins)
        named = [o for o in cors_origins if o != "*"]
        self.cors = self._cors(app, open_origins)  # every other route: as configured (KoboldCpp: "*")
        self.operator_cors = self._cors(app, named)  # operator routes: named origins only, never "*"

    @staticmethod
    def _cors(app: ASGIApp, origins: list[str]) -> ASGIApp:
        if not origins:
            return app
        return CORSMiddleware(app, allow_origins=origins, allow_methods=["*"], allow_headers=["*"])

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if not is_operator_route(path):
            await self.cors(scope, receive, send)
            return
        refusal = self._refusal(scope, Headers(scope=scope))
        if refusal is not None:
            await send_error(scope, send, refusal)
            return
        await self.operator_cors(scope, receive, send)

    def _refusal(self, scope: Scope, headers: Headers) -> Forbidden | None:
        host = headers.get("host", "")
        if self.loopback_only and not is_loopback(_host_name(host)):
            return Forbidden(f"the Host {host!r} is not a loopback name, and this server listens only on loopback",
                             hint="connect as http://127.0.0.1 or http://localhost")
        if scope["method"] in SAFE_METHODS or self.has_admin_key(headers):
            return None
        origin = headers.get("origin", "")
        fetch_site = headers.get("sec-fetch-site", "").lower()
        own = {f"http://{host}", f"https://{host}"}
        if (origin and origin not in own) or fetch_site == "cross-site":
            return Forbidden(f"a cross-origin request from {origin or 'another site'} to an operator route is refused",
                             hint="operator routes take cross-origin calls only with the admin key")
        return None
