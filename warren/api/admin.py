"""Operator endpoints: KoboldCpp's admin API and warren's pool API.

Access: these endpoints are **off** unless the server listens only on loopback or ``--adminpassword``
is set; with a password they need ``Authorization: Bearer <adminpassword>``. KoboldCpp's own admin
routes (``/api/admin/*``) also need ``--admin`` with an admin directory, and answer an auth failure as
KoboldCpp does (200 with ``{"success": false}`` or ``[]``); warren's routes answer 401/403.

- ``GET /api/admin/list_options``: the model files in the admin directory, plus ``unload_model``.
- ``POST /api/admin/reload_config``: hot swap. Unlike KoboldCpp the HTTP server stays up: in-flight
  requests finish on the old model, new ones wait for the new one, and a failed swap leaves the
  previous model active and says why.
- ``GET /api/pool``, ``GET /api/pool/events`` (SSE), ``POST /api/models/{name}/load``,
  ``POST /api/models/{name}/unload``, ``DELETE /api/instances/{handle}``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from warren.api import sse
from warren.api.browser import is_loopback
from warren.api.deps import bearer_ok, get_pool, operator_key
from warren.catalog import Catalog
from warren.errors import ConfigError, Forbidden, InvalidRequest, Unauthorized, WarrenError
from warren.pool.pool import Pool
from warren.units import parse_duration

router = APIRouter()

EVENTS_KEEPALIVE = 15.0  # seconds between SSE comments, so proxies keep an idle events stream open


def admin_allowed(request: Request) -> bool:
    """The operator's routes are open to the operator's key (``--adminpassword``, else ``--password``); without
    any key, only on a server that listens on loopback alone (``warren/api/browser.py`` keeps web pages out)."""
    server = get_pool(request).server
    key = operator_key(server)
    if key:
        return bearer_ok(request, key)
    return is_loopback(server.host)


def require_admin(request: Request) -> None:
    server = get_pool(request).server
    key = operator_key(server)
    if key:
        if not bearer_ok(request, key):
            raise Unauthorized("Admin key is missing or invalid." if server.admin_password else
                               "Authentication key is missing or invalid.")
    elif not is_loopback(server.host):
        raise Forbidden("the admin API is off: the server listens beyond loopback and has no --adminpassword",
                        hint="set --adminpassword to enable it")


def pool_catalog(request: Request) -> Catalog:
    return get_pool(request).catalog


def kobold_admin_ok(request: Request) -> bool:
    pool = get_pool(request)
    return pool.server.admin and bool(pool.catalog.dirs) and admin_allowed(request)


# -- KoboldCpp admin -------------------------------------------------------------------------------------
class ReloadRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    filename: str = Field(..., max_length=1024, pattern=r"^[^\x00]*$")  # a NUL is no file name
    overrideconfig: str | None = Field(None, max_length=1024, pattern=r"^[^\x00]*$")


@router.get("/api/admin/list_options")
async def list_options(request: Request) -> Any:
    if not kobold_admin_ok(request):
        return []
    names = []
    for folder in get_pool(request).catalog.dirs:
        try:
            files = os.listdir(folder)
        except OSError:
            continue
        names += [f for f in files if pool_catalog(request).inside(folder, f) is not None]
    return sorted(names) + ["unload_model"]


@router.post("/api/admin/reload_config")
async def reload_config(body: ReloadRequest, request: Request) -> Any:
    if not kobold_admin_ok(request):
        return {"success": False}
    pool = get_pool(request)
    if body.filename == "unload_model":
        pool.deactivate()
        return {"success": True, "active": None}
    try:
        entry = pool.catalog.for_admin_file(body.filename, body.overrideconfig)
        instance = await pool.activate(entry.name)
    except WarrenError as exc:
        return JSONResponse({"success": False, "error": exc.message, "active": pool.active_name},
                            status_code=200)
    return {"success": True, "active": instance.name, "handle": instance.handle_id}


# -- warren's pool API -----------------------------------------------------------------------------------
class LoadRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pin: bool | None = None
    keep_alive: float | str | None = None


@router.get("/api/pool", dependencies=[Depends(require_admin)])
async def pool_status(pool: Pool = Depends(get_pool)) -> dict[str, Any]:
    """Budget, reserved and measured memory, and every catalog entry with its instance's state."""
    return pool.status()


@router.post("/api/models/{name}/load", dependencies=[Depends(require_admin)])
async def load_model(name: str, request: Request, body: LoadRequest | None = None) -> dict[str, Any]:
    body = body or LoadRequest()
    keep_alive = None
    if body.keep_alive is not None:
        try:
            keep_alive = parse_duration(body.keep_alive, "keep_alive")
        except ConfigError as exc:
            raise InvalidRequest(exc.message, param="keep_alive") from None
    pool = get_pool(request)
    instance = await pool.load(name, pin=body.pin, keep_alive=keep_alive)
    return pool.describe(instance.name)


@router.post("/api/models/{name}/activate", dependencies=[Depends(require_admin)])
async def activate_model(name: str, request: Request) -> dict[str, Any]:
    """Hot swap without KoboldCpp's admin mode: make ``name`` the model un-prefixed routes serve."""
    pool = get_pool(request)
    await pool.activate(name)
    return pool.describe(name)


@router.post("/api/models/{name}/unload", dependencies=[Depends(require_admin)])
async def unload_model(name: str, request: Request) -> dict[str, Any]:
    pool = get_pool(request)
    pool.catalog.get(name)  # 404 for an unknown name
    unloading = pool.unload(name)
    return {"name": name, "unloading": unloading, "instance": pool.describe(name)}


@router.delete("/api/instances/{handle}", dependencies=[Depends(require_admin)])
async def delete_instance(handle: str, request: Request) -> dict[str, Any]:
    pool = get_pool(request)
    if "@" not in handle:
        raise InvalidRequest(f"{handle!r} is not a handle (name@generation)", param="handle")
    unloading = pool.unload(handle)
    return {"handle": handle, "unloading": unloading}


@router.get("/api/pool/events", dependencies=[Depends(require_admin)])
async def pool_events(request: Request) -> StreamingResponse:
    """SSE of pool changes: a ``snapshot`` event first, then ``loading``/``ready``/``unloaded``/``crashed``…"""
    pool = get_pool(request)

    async def stream() -> AsyncIterator[bytes]:
        async with pool.events.subscribe() as queue:
            yield sse.event({"type": "snapshot", **pool.status()}, "snapshot")
            while True:
                try:
                    event = await asyncio.wait_for(queue.get(), EVENTS_KEEPALIVE)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                yield sse.event(event, str(event["type"]))

    return StreamingResponse(stream(), media_type="text/event-stream", headers=sse.SSE_HEADERS)
