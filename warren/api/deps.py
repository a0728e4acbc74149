"""FastAPI dependencies: the pool, the instance a request addresses, and the API-key check.

Every route is mounted twice: at the root (the active model) and under ``/m/{model_name}`` (one
model), so a client that only takes a base URL can be pointed at one model.
"""

from __future__ import annotations

import hmac

from fastapi import Request
from starlette.datastructures import Headers

from warren.errors import ModelNotFound, Unauthorized
from warren.pool.instance import ModelInstance
from warren.pool.lease import split_handle
from warren.pool.pool import Pool
from warren.settings import ServerSettings


def get_pool(request: Request) -> Pool:
    pool: Pool = request.app.state.pool
    return pool


def model_from_path(request: Request) -> str | None:
    name = request.path_params.get("model_name")
    return str(name) if name else None


def client_model(pool: Pool, name: str | None) -> str | None:
    """The model a client's ``model`` field asks for (OpenAI, Ollama). A server of one model serves it whatever
    the name, as KoboldCpp and llama-server do: many apps hard-code ``gpt-3.5-turbo``. With several models
    a name must be one of them (a 404 that lists them); a handle (``name@N``) is always taken exactly."""
    if not name:
        return None
    try:
        pool.catalog.get(split_handle(name)[0])
    except ModelNotFound:
        entries = pool.catalog.entries
        if len(entries) == 1 and split_handle(name)[1] is None:
            return next(iter(entries))
        raise
    return name


def get_instance(request: Request) -> ModelInstance:
    """The instance named by the ``/m/{name}`` prefix, or the active model; not loaded by this."""
    return get_pool(request).instance_for(model_from_path(request))


def presented_key(headers: Headers) -> str:
    """The key a request carries: ``Authorization: Bearer KEY``, or KoboldCpp's ``apikey`` header."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        token = headers.get("apikey", "")
    return token.strip()


def key_matches(headers: Headers, secret: str | None) -> bool:
    if not secret:
        return True
    return hmac.compare_digest(presented_key(headers).encode(), secret.encode())


def bearer_ok(request: Request, secret: str | None) -> bool:
    return key_matches(request.headers, secret)


def operator_key(server: ServerSettings) -> str | None:
    """The key that opens the operator's routes: ``--adminpassword``, else ``--password`` (with only an API key
    set, the operator's routes need it too), else none (then only a loopback-only server opens them)."""
    return server.admin_password or server.password or None


def require_api_key(request: Request) -> None:
    """``--password``: generation endpoints need ``Authorization: Bearer <password>``."""
    if not bearer_ok(request, get_pool(request).server.password):
        raise Unauthorized("Authentication key is missing or invalid.")
