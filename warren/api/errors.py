"""Errors as each dialect shows them: the one place a ``WarrenError`` becomes a response body.

- KoboldCpp: ``{"detail": {"msg": …, "type": …}}`` (its own shape; 401 adds ``"error": "Unauthorized"``).
- OpenAI: ``{"error": {"message": …, "type": …, "param": null, "code": …}}``.
- Ollama: ``{"error": "…"}``.

The dialect is chosen by the route (``/v1/…`` is OpenAI, Ollama's own ``/api/…`` names are Ollama, the
rest KoboldCpp), after stripping the
per-model prefix ``/m/{name}``. Unexpected exceptions become a 500 with a request id and a generic
message; the traceback goes to the log only.
"""

from __future__ import annotations

import enum
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope, Send

from warren.errors import (
    BodyTooLarge,
    Busy,
    ClientGone,
    ConfigError,
    DoesNotFit,
    Forbidden,
    GrammarRejected,
    HandleGone,
    InvalidRequest,
    MethodNotAllowed,
    ModelFileError,
    ModelNotFound,
    NotFound,
    PromptTooLong,
    Quarantined,
    RequestNotStarted,
    RequestRefused,
    RequestTimeout,
    ServerStopping,
    Unauthorized,
    WarrenError,
    WorkerClosed,
    WorkerCrashed,
    WorkerError,
    WorkerLoadFailed,
    WorkerNotPlaced,
)
from warren.validation import ValidationFailed

log = logging.getLogger(__name__)


class Dialect(enum.Enum):
    KOBOLD = "kobold"
    OPENAI = "openai"
    OLLAMA = "ollama"


OLLAMA_ROUTES = frozenset({"/api/generate", "/api/chat", "/api/tags", "/api/ps", "/api/show", "/api/version",
                           "/api/embed", "/api/embeddings", "/api/pull", "/api/push", "/api/create",
                           "/api/copy", "/api/delete", "/api/blobs"})


def strip_model_prefix(path: str) -> str:
    if path.startswith("/m/"):
        rest = path[3:].split("/", 1)
        return "/" + rest[1] if len(rest) > 1 else "/"
    return path


def dialect_of(path: str) -> Dialect:
    path = strip_model_prefix(path).rstrip("/") or "/"
    if path == "/v1" or path.startswith("/v1/"):
        return Dialect.OPENAI
    if path in OLLAMA_ROUTES:
        return Dialect.OLLAMA
    return Dialect.KOBOLD


OPERATOR_PREFIXES = ("/api/admin/", "/api/models/", "/api/instances/", "/api/pool", "/metrics")


def is_operator_route(path: str) -> bool:
    """The operator's routes: the KoboldCpp admin API, warren's pool API and the metrics."""
    return path.startswith(OPERATOR_PREFIXES)


def redacted(exc: WarrenError, redact: Callable[[str], str]) -> WarrenError:
    """The same error with ``redact`` applied to its message (the catalog's, which cuts folders off paths)."""
    message = redact(exc.message)
    if message == exc.message:
        return exc
    return WarrenError.from_wire({**exc.to_wire(), "message": message})


# Each class's type in the two dialects that name one: (KoboldCpp ``detail.type``, OpenAI ``error.type``).
# Every class has its own row — ``tests/api/test_error_mapping.py`` fails when one is added without — so a
# new error is classified on purpose, never by accident of its base class. KoboldCpp's own types are
# ``bad_input``, ``service_unavailable`` and ``unauthorized``; other failures name their code. OpenAI's
# clients branch on the type (``permission_error`` → PermissionDeniedError, …).
DIALECT_TYPES: dict[type[WarrenError], tuple[str, str]] = {
    WarrenError: ("internal_error", "server_error"),
    InvalidRequest: ("bad_input", "invalid_request_error"),
    PromptTooLong: ("bad_input", "invalid_request_error"),
    GrammarRejected: ("bad_input", "invalid_request_error"),
    RequestRefused: ("bad_input", "invalid_request_error"),
    RequestTimeout: ("bad_input", "invalid_request_error"),
    BodyTooLarge: ("bad_input", "invalid_request_error"),
    ConfigError: ("bad_input", "invalid_request_error"),
    ModelFileError: ("bad_input", "invalid_request_error"),
    ValidationFailed: ("bad_input", "invalid_request_error"),
    Unauthorized: ("unauthorized", "authentication_error"),
    Forbidden: ("forbidden", "permission_error"),
    NotFound: ("not_found", "invalid_request_error"),  # what OpenAI itself answers for an unknown model
    ModelNotFound: ("model_not_found", "invalid_request_error"),
    MethodNotAllowed: ("method_not_allowed", "invalid_request_error"),
    HandleGone: ("handle_gone", "invalid_request_error"),
    ClientGone: ("client_gone", "invalid_request_error"),
    Busy: ("service_unavailable", "server_error"),
    ServerStopping: ("service_unavailable", "server_error"),
    DoesNotFit: ("does_not_fit_budget", "invalid_request_error"),  # the model can never load as configured
    Quarantined: ("model_quarantined", "server_error"),
    WorkerError: ("worker_unavailable", "server_error"),
    WorkerClosed: ("worker_closed", "server_error"),
    WorkerCrashed: ("worker_crashed", "server_error"),
    WorkerLoadFailed: ("worker_load_failed", "server_error"),
    WorkerNotPlaced: ("worker_not_placed", "server_error"),
    RequestNotStarted: ("request_not_started", "server_error"),
}


def dialect_types(exc: WarrenError) -> tuple[str, str]:
    """The row of ``exc``'s class (of its nearest listed ancestor, for a class defined outside warren)."""
    for cls in type(exc).__mro__:
        if cls in DIALECT_TYPES:
            return DIALECT_TYPES[cls]
    return DIALECT_TYPES[WarrenError]


def error_body(dialect: Dialect, exc: WarrenError) -> dict[str, Any]:
    kobold_type, openai_type = dialect_types(exc)
    if dialect is Dialect.OLLAMA:
        return {"error": exc.message}
    if dialect is Dialect.OPENAI:
        return {"error": {"message": exc.message, "type": openai_type, "param": exc.details.get("param"),
                          "code": exc.code}}
    if isinstance(exc, Unauthorized):  # KoboldCpp's own 401 body
        return {"detail": {"error": "Unauthorized", "msg": exc.message, "type": kobold_type}}
    return {"detail": {"msg": exc.message, "type": kobold_type}}


async def send_error(scope: Scope, send: Send, error: WarrenError) -> None:
    """Answer ``error`` in the route's dialect straight from an ASGI middleware (before any routing)."""
    body = json.dumps(error_body(dialect_of(scope["path"]), error)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if isinstance(error, Busy):
        headers.append((b"retry-after", str(error.retry_after).encode()))
    await send({"type": "http.response.start", "status": error.http_status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def error_response(request: Request, exc: WarrenError) -> JSONResponse:
    if not is_operator_route(request.url.path):  # only the operator sees where the model files are
        exc = redacted(exc, request.app.state.pool.catalog.redact)
    headers = {}
    if isinstance(exc, Busy):
        headers["Retry-After"] = str(exc.retry_after)
    elif isinstance(exc, RequestNotStarted):
        headers["Retry-After"] = "1"  # nothing of it ran: the model is being loaded again
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(error_body(dialect_of(request.url.path), exc), status_code=exc.http_status,
                        headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for e in exc.errors()[:5]:
        if e.get("type") == "json_invalid":
            return "the request body is not valid JSON"
        loc = ".".join(str(x) for x in e.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {e.get('msg', 'invalid')}")
    return "invalid request: " + "; ".join(parts)


def install_error_handlers(app: FastAPI) -> None:
    async def on_warren(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, WarrenError)
        if exc.http_status >= 500:
            log.warning("request failed path=%s error=%s", request.url.path, exc.message)
        return error_response(request, exc)

    async def on_validation(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        param = ".".join(str(x) for x in errors[0].get("loc", ()) if x != "body") if errors else None
        return error_response(request, InvalidRequest(_describe_validation(exc), param=param or None))

    async def on_http(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404:
            err: WarrenError = NotFound(f"no such endpoint: {request.method} {request.url.path}",
                                        hint="see docs/api-compat.md for the routes warren serves")
        elif exc.status_code == 405:
            err = MethodNotAllowed(f"{request.url.path} does not accept {request.method}")
        else:
            err = InvalidRequest(str(exc.detail))
        return error_response(request, err)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = uuid.uuid4().hex[:12]
        log.exception("unexpected error request_id=%s path=%s", request_id, request.url.path)
        err = WarrenError(f"internal error (request id {request_id}); the server log has the details")
        return error_response(request, err)

    app.add_exception_handler(WarrenError, on_warren)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(Exception, on_unexpected)
