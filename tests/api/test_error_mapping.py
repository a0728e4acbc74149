"""Every error class maps to every dialect's shape, on purpose (httpx's "all exceptions mapped" test)."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import warren
from warren.api.errors import DIALECT_TYPES, Dialect, error_body
from warren.errors import WarrenError

# Every module of warren, so that every WarrenError subclass it defines is registered.
for module in pkgutil.walk_packages(warren.__path__, "warren."):
    if not module.name.endswith("__main__") and not module.name.startswith(("warren.worker.engine", "warren.worker.probe")):
        importlib.import_module(module.name)  # (the engine imports llama_cpp: not the supervisor's business)

CLASSES = sorted((c for c in {WarrenError, *WarrenError._registry.values()} if c.__module__.startswith("warren")),
                 key=lambda c: c.__name__)
KOBOLD_TYPES = {"bad_input", "service_unavailable", "unauthorized"}
OPENAI_TYPES = {"invalid_request_error", "authentication_error", "permission_error", "server_error"}


def test_every_error_class_has_its_own_row() -> None:
    missing = [c.__name__ for c in CLASSES if c not in DIALECT_TYPES]
    assert not missing, f"add these to warren/api/errors.py DIALECT_TYPES: {missing}"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_each_dialect_shapes_each_class(cls: type[WarrenError]) -> None:
    exc = WarrenError.from_wire({"kind": cls.__name__, "message": "what went wrong", "details": {"param": "x"}})
    assert type(exc) is cls and 400 <= cls.http_status < 600
    kobold = error_body(Dialect.KOBOLD, exc)["detail"]
    assert kobold["msg"] == "what went wrong"
    assert kobold["type"] in KOBOLD_TYPES or kobold["type"] == cls.code
    openai = error_body(Dialect.OPENAI, exc)["error"]
    assert openai == {"message": "what went wrong", "type": openai["type"], "param": "x", "code": cls.code}
    assert openai["type"] in OPENAI_TYPES
    # The type agrees with the status: OpenAI's clients and KoboldCpp's read one or the other.
    assert (openai["type"] == "server_error") == (cls.http_status >= 500 and cls.http_status != 507)
    assert (kobold["type"] == "bad_input") == (openai["type"] == "invalid_request_error" and cls.http_status in (400, 408, 413))
    assert error_body(Dialect.OLLAMA, exc) == {"error": "what went wrong"}


def test_openai_labels_403_and_507_as_what_they_are() -> None:
    from warren.errors import DoesNotFit, Forbidden

    assert error_body(Dialect.OPENAI, Forbidden("no"))["error"]["type"] == "permission_error"
    assert error_body(Dialect.OPENAI, DoesNotFit("too big"))["error"]["type"] == "invalid_request_error"
