"""Hand-written hostile requests against every dialect: zero 5xx, and the server still answers after."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.conftest import Server

HUGE = 40 * 1024 * 1024  # over the default --maxrequestsize of 32 MB


@pytest.mark.parametrize(("path", "body"), [
    ("/api/v1/generate", b"[" * 100_000 + b"]" * 100_000),  # deep JSON
    ("/api/v1/generate", b"\xff\xfe\xfd{}"),  # invalid UTF-8
    ("/api/v1/generate", json.dumps({"prompt": "x", "max_length": -5}).encode()),
    ("/api/v1/generate", json.dumps({"prompt": "x", "max_length": 10**30}).encode()),
    ("/api/v1/generate", json.dumps({"prompt": "x", "temperature": 1e308, "top_k": -1}).encode()),
    ("/api/v1/generate", json.dumps({"prompt": ["not", "a", "string"]}).encode()),
    ("/api/v1/generate", json.dumps({"prompt": "x", "logit_bias": {"99999999999": 5}}).encode()),
    ("/api/extra/tokenize", json.dumps({"prompt": None}).encode()),
    ("/api/extra/detokenize", json.dumps({"ids": [-1, 2**40]}).encode()),
    ("/v1/completions", json.dumps({"prompt": "x", "max_tokens": -1}).encode()),
    ("/v1/completions", json.dumps({"prompt": [], "model": "x" * 100_000}).encode()),
    ("/v1/chat/completions", json.dumps({"messages": [{"role": "user"}] * 5000}).encode()),
    ("/v1/chat/completions", json.dumps({"messages": "hello"}).encode()),
    ("/api/generate", json.dumps({"model": "", "prompt": "x"}).encode()),
    ("/api/chat", json.dumps({"model": "a", "messages": [{"role": "wizard", "content": "x"}]}).encode()),
    ("/api/generate", json.dumps({"model": "SmolLM2-135M-Instruct.Q4_1", "keep_alive": "forever"}).encode()),
    ("/api/show", json.dumps({}).encode()),
    ("/api/models/../../etc/passwd/load", b"{}"),
    # Issue 11, item 8: each was a 500 or a dropped connection.
    ("/api/v1/generate", json.dumps({"prompt": "x", "logit_bias": {"99999999999999999999": 1}}).encode()),
    ("/v1/completions", json.dumps({"prompt": "x", "logit_bias": {"99999999999999999999": 1}}).encode()),
    ("/api/v1/generate", b'{"prompt": "x", "stop_sequence": ["\\ud800"]}'),  # a lone surrogate
    ("/api/v1/generate", b'{"prompt": "\\udfff tail", "max_length": 2}'),
    ("/api/generate", b'{"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": "x", "options": {"stop": ["\\ud800"]}}'),
    ("/api/extra/tokencount", b'{"prompt": "\\ud800"}'),
    ("/api/admin/reload_config", json.dumps({"filename": "a\u0000.gguf"}).encode()),
    ("/api/v1/generate", json.dumps({"prompt": "x", "stop_sequence": ["x" * 8000] * 256}).encode()),
    ("/v1/completions", json.dumps({"prompt": "x", "stop": ["x" * 8000] * 256}).encode()),
    ("/api/chat", json.dumps({"model": "SmolLM2-135M-Instruct.Q4_1", "messages": [{"role": "user", "content": "x"}],
                              "options": {"stop": ["x" * 8000] * 256}}).encode()),
])
def test_bad_bodies_are_4xx(server: Server, path: str, body: bytes) -> None:
    r = httpx.post(f"{server.url}{path}", content=body, timeout=60)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert "Traceback" not in r.text


def test_a_file_outside_the_admin_directory_is_refused_koboldcpps_way(server: Server) -> None:
    r = httpx.post(f"{server.url}/api/admin/reload_config", json={"filename": "../../etc/passwd"}, timeout=60)
    assert r.status_code == 200 and r.json() == {"success": False}  # KoboldCpp's answer (admin is off here)


def test_a_body_over_the_limit_is_413_without_reading_it(server: Server) -> None:
    r = httpx.post(f"{server.url}/api/v1/generate", content=b"x" * HUGE, timeout=60)
    # The test server's context is 2048 tokens: a body beyond what such a prompt could take is refused.
    assert r.status_code == 413 and "larger than the 1.1 MB limit" in r.json()["detail"]["msg"]


def test_chunked_body_over_the_limit(server: Server) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        for _ in range(40):
            yield b"x" * (1024 * 1024)

    r = httpx.post(f"{server.url}/v1/completions", content=chunks(), timeout=60)
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert httpx.get(f"{server.url}/ping").status_code == 200


def test_prompts_longer_than_the_context(server: Server) -> None:
    long = "word " * 2500  # the test server's context is 2048
    kobold = httpx.post(f"{server.url}/api/v1/generate", json={"prompt": long, "max_length": 2}, timeout=120)
    assert kobold.status_code == 200  # KoboldCpp's way: the oldest part of the prompt is dropped
    oai = httpx.post(f"{server.url}/v1/completions", json={"prompt": long, "max_tokens": 2}, timeout=120)
    assert oai.status_code == 400 and oai.json()["error"]["code"] == "context_length_exceeded"


@pytest.mark.parametrize(("path", "body", "status"), [
    ("/m/ghost/api/v1/generate", {"prompt": "x"}, 404),
    # a server of one model serves it whatever name a client sends (KoboldCpp's way); several: 404 (tests/api)
    ("/v1/completions", {"model": "ghost", "prompt": "x", "max_tokens": 1}, 200),
    ("/api/generate", {"model": "ghost", "prompt": "x", "stream": False, "options": {"num_predict": 1}}, 200),
    ("/m/SmolLM2-135M-Instruct.Q4_1@999/api/v1/generate", {"prompt": "x"}, 410),
    ("/v1/completions", {"model": "SmolLM2-135M-Instruct.Q4_1@999", "prompt": "x"}, 410),
    ("/m/@1/api/v1/generate", {"prompt": "x"}, 404),
])
def test_unknown_models_and_handles(server: Server, path: str, body: dict, status: int) -> None:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=60)
    assert r.status_code == status, (path, r.status_code, r.text)
    assert httpx.post(f"{server.url}/api/v1/generate", json={"prompt": "Hi", "max_length": 2}).status_code == 200
