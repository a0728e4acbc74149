"""Passwords on the right route groups, CORS as configured, and no secret in the log."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import start_server

GENERATION_ROUTES = [  # every route that runs the model or its tokenizer
    ("/api/v1/generate", {"prompt": "Hi", "max_length": 1}),
    ("/api/latest/generate", {"prompt": "Hi", "max_length": 1}),
    ("/api/extra/generate/stream", {"prompt": "Hi", "max_length": 1}),
    ("/api/extra/generate/check", {}),
    ("/api/extra/abort", {}),
    ("/api/extra/tokencount", {"prompt": "Hi"}),
    ("/api/extra/tokenize", {"prompt": "Hi"}),
    ("/api/extra/detokenize", {"ids": [1]}),
    ("/v1/completions", {"prompt": "Hi", "max_tokens": 1}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}),
    ("/api/generate", {"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": "Hi", "stream": False,
                       "options": {"num_predict": 1}}),
    ("/api/chat", {"model": "SmolLM2-135M-Instruct.Q4_1", "messages": [{"role": "user", "content": "Hi"}],
                   "stream": False, "options": {"num_predict": 1}}),
]
OPEN_ROUTES = ["/api/v1/model", "/api/v1/info/version", "/api/extra/version", "/api/extra/perf",
               "/api/extra/true_max_context_length", "/v1/models", "/api/tags", "/api/version", "/ping"]
ADMIN_ROUTES = [("GET", "/api/pool"), ("POST", "/api/models/SmolLM2-135M-Instruct.Q4_1/load"),
                ("POST", "/api/models/SmolLM2-135M-Instruct.Q4_1/unload"),
                ("DELETE", "/api/instances/SmolLM2-135M-Instruct.Q4_1@1"), ("GET", "/api/pool/events")]


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, model_path: Path):  # type: ignore[no-untyped-def]
    admindir = tmp_path_factory.mktemp("admin")
    server = start_server(["--model", str(model_path), "--contextsize", "512", "--password", "pw-gen-8841",
                           "--adminpassword", "pw-adm-5512", "--admin", "--admindir", str(admindir),
                           "--debugmode", "--cors-origins", "http://app.example"], tmp_path_factory.mktemp("s"))
    yield server
    server.stop()


@pytest.mark.parametrize(("path", "body"), GENERATION_ROUTES)
def test_generation_routes_need_the_api_key(secured, path: str, body: dict) -> None:  # type: ignore[no-untyped-def]
    assert httpx.post(f"{secured.url}{path}", json=body, timeout=60).status_code == 401
    wrong = httpx.post(f"{secured.url}{path}", json=body, timeout=60, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    ok = httpx.post(f"{secured.url}{path}", json=body, timeout=60, headers={"Authorization": "Bearer pw-gen-8841"})
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("path", OPEN_ROUTES)
def test_information_routes_stay_open(secured, path: str) -> None:  # type: ignore[no-untyped-def]
    assert httpx.get(f"{secured.url}{path}").status_code == 200


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_need_the_admin_key(secured, method: str, path: str) -> None:  # type: ignore[no-untyped-def]
    assert httpx.request(method, f"{secured.url}{path}").status_code == 401
    # The API key is not the admin key.
    r = httpx.request(method, f"{secured.url}{path}", headers={"Authorization": "Bearer pw-gen-8841"})
    assert r.status_code == 401


def test_koboldcpp_admin_answers_auth_failures_its_way(secured) -> None:  # type: ignore[no-untyped-def]
    assert httpx.get(f"{secured.url}/api/admin/list_options").json() == []
    assert httpx.post(f"{secured.url}/api/admin/reload_config", json={"filename": "x.gguf"}).json() == \
        {"success": False}
    ok = httpx.get(f"{secured.url}/api/admin/list_options", headers={"Authorization": "Bearer pw-adm-5512"})
    assert ok.json() == ["unload_model"]


def test_cors_as_configured(secured, tmp_path: Path, model_path: Path) -> None:  # type: ignore[no-untyped-def]
    allowed = httpx.get(f"{secured.url}/api/v1/model", headers={"Origin": "http://app.example"})
    assert allowed.headers.get("access-control-allow-origin") == "http://app.example"
    other = httpx.get(f"{secured.url}/api/v1/model", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers
    default = start_server(["--model", str(model_path), "--contextsize", "512", "--no-warm-spare"], tmp_path)
    try:
        r = httpx.options(f"{default.url}/api/v1/generate", headers={
            "Origin": "http://anywhere.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"  # KoboldCpp's default
    finally:
        default.stop()


def test_no_secret_reaches_the_log(secured) -> None:  # type: ignore[no-untyped-def]
    for key in ("pw-gen-8841", "pw-adm-5512", "wrong-key"):
        httpx.post(f"{secured.url}/api/v1/generate", json={"prompt": "Hi", "max_length": 1},
                   headers={"Authorization": f"Bearer {key}"}, timeout=60)
        httpx.get(f"{secured.url}/api/pool", headers={"Authorization": f"Bearer {key}"})
    log = secured.log()
    assert "DEBUG" in log  # --debugmode really logged more
    for secret in ("pw-gen-8841", "pw-adm-5512"):
        assert secret not in log
