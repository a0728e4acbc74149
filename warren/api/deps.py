"""FastAPI dependencies: the pool, the instance a request addresses, and the API-key check.

Every route is mounted twice: at the root (the active model) and under ``/m/{model_name}`` (one
model), so a client that only takes a base URL can be pointed at one model.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from warren.errors import Unauthorized
from warren.pool.instance import ModelInstance
from warren.pool.pool import Pool


def get_pool(request: Request) -> Pool:
    pool: Pool = request.app.state.pool
    return pool


def model_from_path(request: Request) -> str | None:
    name = request.path_params.get("model_name")
    return str(name) if name else None


def get_instance(request: Request) -> ModelInstance:
    """The instance named by the ``/m/{name}`` prefix, or the active model; not loaded by this."""
    return get_pool(request).instance_for(model_from_path(request))


def bearer_ok(request: Request, secret: str | None) -> bool:
    if not secret:
        return True
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        token = request.headers.get("apikey", "")  # KoboldCpp also accepts this header
    return hmac.compare_digest(token.strip().encode(), secret.encode())


def require_api_key(request: Request) -> None:
    """``--password``: generation endpoints need ``Authorization: Bearer <password>``."""
    if not bearer_ok(request, get_pool(request).server.password):
        raise Unauthorized("Authentication key is missing or invalid.")
