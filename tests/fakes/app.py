"""A pool (and the HTTP app around it) with no process and no real time: for pool and API tests that
need no real model.

- ``FixedCatalog`` / ``fake_entry``: catalog entries on fake engines, with the estimates a test chooses.
- ``InProcessApp``: ``create_app`` over a ``Pool`` on the in-process launcher
  (``tests/fakes/inprocess.py``) and a fake clock (``tests/fakes/fake_clock.py``) — on given entries
  (``start``), or on what a command line builds (``from_args``: the real catalog of real GGUF files, each
  served by a fake engine). ``client()`` is an
  ``httpx.AsyncClient`` on the app itself (``ASGITransport``, no socket); ``call()`` drives one request
  by hand when the test must decide when the client leaves (``http.disconnect``), which ``ASGITransport``
  never sends. The lifespan is not run: the harness starts and closes the pool itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI

from tests.fakes.fake_clock import FakeClock
from tests.fakes.inprocess import FAKE, InProcessLauncher
from warren.api.app import create_app
from warren.catalog import Catalog, CatalogEntry
from warren.cli.main import build_catalog, parse
from warren.gguf.estimate import MemoryEstimate
from warren.pool.pool import Pool
from warren.settings import ModelSettings, ServerSettings
from warren.validation import validate

MIB = 1 << 20
HOST = "127.0.0.1:5001"  # a loopback Host: the operator's routes answer it (warren/api/browser.py)


class FixedCatalog(Catalog):
    """A catalog of given entries, which rescans leave as they are."""

    def __init__(self, entries: list[CatalogEntry], active: str | None = None) -> None:
        super().__init__({})
        self.entries = {e.name: e for e in entries}
        if active is not None:
            self.active = self.entries[active].settings

    def refresh(self) -> None:
        pass


def fake_entry(name: str, engine: str = "fake", mib: int = 100, *, parked_mib: int = 0, kv_mib: int = 0,
               **knobs: Any) -> CatalogEntry:
    """An entry on ``tests.fakes.fake_engine:<engine>`` whose estimate is ``mib`` (``parked_mib`` parked)."""
    settings = ModelSettings(name=name, path=Path("/dev/null"), engine=f"tests.fakes.fake_engine:{engine}")
    estimate = MemoryEstimate(weights=(mib - kv_mib) * MIB, kv_cache=kv_mib * MIB, compute=0, worker_base=0,
                              parked=parked_mib * MIB)
    return CatalogEntry(name, "test", Path("/dev/null"), settings, estimate, "", (name, engine), **knobs)


@dataclasses.dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclasses.dataclass
class InProcessApp:
    app: FastAPI
    pool: Pool
    launcher: InProcessLauncher
    clock: FakeClock

    @classmethod
    async def start(cls, entries: list[CatalogEntry], budget_mib: int = 1000, *, active: str | None = None,
                    launcher: InProcessLauncher | None = None, server: ServerSettings | None = None,
                    **pool: Any) -> InProcessApp:
        launcher = launcher or InProcessLauncher()
        clock = FakeClock()
        pool.setdefault("warm_spare", False)
        p = Pool(server or ServerSettings(), FixedCatalog(entries, active), budget=budget_mib * MIB,
                 launcher=launcher, clock=clock, **pool)
        await p.start(preload=False)
        return cls(create_app(p, preload=False), p, launcher, clock)

    @classmethod
    async def from_args(cls, argv: list[str], *, preload: bool = True, engine: str = FAKE) -> InProcessApp:
        """The app ``warren ARGV`` would serve (its catalog, settings and pool), with fake workers (``engine``)
        in place of llama.cpp and the fake clock; ``preload`` loads the active model, as the server does."""
        opts, explicit, _ = parse(argv)
        plan = validate(opts, explicit, check_port=False)
        launcher = InProcessLauncher(engines={"llama": engine}, default_engine="llama")
        clock = FakeClock()
        pool = Pool.from_settings(plan.server, build_catalog(plan, opts), launcher=launcher, clock=clock)
        await pool.start(preload=preload)
        return cls(create_app(pool, preload=False), pool, launcher, clock)

    async def close(self) -> None:
        await self.pool.close()

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app, client=("127.0.0.1", 40000)),
                                 base_url=f"http://{HOST}", timeout=30)

    def instance(self, name: str) -> dict[str, Any]:
        return self.pool.describe(name)

    async def call(self, method: str, path: str, body: Any = None, *, gone: asyncio.Event | None = None) -> Reply:
        """One request as uvicorn makes it (ASGI spec 2.3): the body, then — once ``gone`` is set — an
        ``http.disconnect`` for every later ``receive``, as when the client closed its connection."""
        data = b"" if body is None else json.dumps(body).encode()
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 40000), "server": ("127.0.0.1", 5001),
                 "headers": [(b"host", HOST.encode()), (b"content-type", b"application/json"),
                             (b"content-length", str(len(data)).encode())]}
        delivered = False

        async def receive() -> dict[str, Any]:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": data, "more_body": False}
            await (gone or asyncio.Event()).wait()
            return {"type": "http.disconnect"}

        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                start.update(message)
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        headers = {k.decode().lower(): v.decode() for k, v in start.get("headers", [])}
        return Reply(start.get("status", 0), headers, b"".join(chunks))
