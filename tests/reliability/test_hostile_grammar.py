"""Issue 11, item 1, replayed: grammars and schemas that crashed or stalled the worker are refused with a
400 in each dialect's shape, fast, before any model is loaded for them; the model keeps serving with
the same worker (no crash, no quarantine)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Server, Servers

ZA = {"prompt": "x", "max_length": 2, "grammar": "root ::= [z-a]"}  # the 14-byte grammar
NESTED = "root ::= " + "(" * 100_000 + '"a"' + ")" * 100_000  # 200 KB
ALTERNATIVES = "root ::= " + " | ".join(f'"w{i}"' for i in range(20_000))
LONG_STRING = {"type": "string", "maxLength": 10_000_000}
BIG_ENUM = {"enum": [f"value {i}" for i in range(20_000)]}
FAST = 1.5  # seconds: the checks take milliseconds; the rest is HTTP on a busy 2-core machine


@pytest.fixture(scope="module")
def srv(module_servers: Servers, model_path: Path) -> Server:
    """The default model, plus ``idle``, a catalog entry that nothing here should ever load."""
    return module_servers.start("--model", str(model_path), "--contextsize", "1024", "--no-warm-spare",
                                models={"idle": 512})


def model(srv: Server) -> dict[str, Any]:
    pool = srv.pool()
    return next(i for i in pool["instances"] if i["name"] == pool["active"])


def post(srv: Server, path: str, body: dict[str, Any]) -> tuple[httpx.Response, float]:
    started = time.perf_counter()
    r = httpx.post(f"{srv.url}{path}", json=body, timeout=120)
    return r, time.perf_counter() - started


def test_the_14_byte_grammar_is_refused_every_time_and_the_worker_lives(srv: Server) -> None:
    pid = model(srv)["pid"]
    for _ in range(4):
        r, _ = post(srv, "/api/v1/generate", ZA)
        assert r.status_code == 400, r.text
        detail = r.json()["detail"]
        assert detail["type"] == "bad_input"
        assert detail["msg"].startswith("grammar: the character range [z-a] is empty"), detail
    status = model(srv)
    assert status["pid"] == pid and status["crashes"] == 0 and status["state"] in ("ready", "busy")
    assert "quarantined" not in status
    r, _ = post(srv, "/api/v1/generate", {"prompt": "x", "max_length": 2})
    assert r.status_code == 200


@pytest.mark.parametrize(("path", "body", "words"), [
    ("/api/v1/generate", {"prompt": "x", "max_length": 2, "grammar": NESTED}, "nested more than 2,000 deep"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 2, "grammar": NESTED}, "nested more than 2,000 deep"),
    ("/api/v1/generate", {"prompt": "x", "max_length": 2, "grammar": ALTERNATIVES}, "in 20,000 different ways"),
    ("/v1/completions", {"prompt": "x", "max_tokens": 2, "grammar": ALTERNATIVES}, "in 20,000 different ways"),
    ("/api/generate", {"prompt": "x", "stream": False, "format": LONG_STRING}, "maxLength at / must be"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "response_format": {
        "type": "json_schema", "json_schema": {"name": "s", "schema": LONG_STRING}}}, "maxLength at / must be"),
    ("/api/chat", {"messages": [{"role": "user", "content": "x"}], "stream": False, "format": BIG_ENUM},
     "an enum of 20,000 values"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2, "response_format": {
        "type": "json_schema", "json_schema": {"name": "s", "schema": BIG_ENUM}}}, "an enum of 20,000 values"),
])
def test_crashing_and_stalling_grammars_are_refused_fast_in_each_dialect(srv: Server, path: str,
                                                                         body: dict[str, Any], words: str) -> None:
    pid = model(srv)["pid"]
    if path.startswith(("/api/generate", "/api/chat")):
        body = {**body, "model": model(srv)["name"]}
    r, seconds = post(srv, path, body)
    assert r.status_code == 400, r.text[:300]
    assert seconds < FAST
    data = r.json()
    if path.startswith("/v1/"):
        error = data["error"]
        assert error["code"] == "invalid_grammar" and error["type"] == "invalid_request_error"
        assert error["param"] == ("grammar" if "grammar" in body else "response_format") and words in error["message"]
    elif path.startswith("/api/v1/"):
        assert data["detail"]["type"] == "bad_input" and words in data["detail"]["msg"]
    else:
        assert data["error"].startswith("format: ") and words in data["error"]
    status = model(srv)
    assert status["pid"] == pid and status["crashes"] == 0


def test_a_hostile_grammar_never_loads_a_model(srv: Server) -> None:
    """The check runs before the pool is asked for the model: a model that is not loaded stays so."""
    for path, body in (("/m/idle/api/v1/generate", ZA),
                       ("/v1/chat/completions", {"model": "idle", "messages": [{"role": "user", "content": "x"}],
                                                 "response_format": {"type": "json_schema",
                                                                     "json_schema": {"schema": BIG_ENUM}}}),
                       ("/api/generate", {"model": "idle", "prompt": "x", "format": LONG_STRING})):
        r, _ = post(srv, path, body)
        assert r.status_code == 400, r.text[:300]
    idle = next(i for i in srv.pool()["instances"] if i["name"] == "idle")
    assert idle["state"] == "unloaded" and idle["pid"] is None


def test_a_valid_grammar_with_ban_eos_token_stops_cleanly(srv: Server) -> None:
    """After "a" the grammar allows only the end, which ban_eos_token bans: llama.cpp aborted the worker
    there (SIGABRT); now the generation ends with the text it has."""
    pid = model(srv)["pid"]
    r, _ = post(srv, "/api/v1/generate", {"prompt": "Say a letter:", "max_length": 8, "grammar": 'root ::= "a"',
                                          "ban_eos_token": True, "temperature": 0})
    assert r.status_code == 200, r.text
    assert r.json()["results"][0]["text"] == "a"
    # Banning the only way to start: nothing can be generated, which is the request's fault (400).
    r, _ = post(srv, "/api/v1/generate", {"prompt": "x", "max_length": 8, "grammar": 'root ::= "a"',
                                          "banned_strings": ["a"], "temperature": 0})
    assert r.status_code == 400 and "allows no token to start with" in r.json()["detail"]["msg"]
    status = model(srv)
    assert status["pid"] == pid and status["crashes"] == 0


def test_streams_refuse_before_the_first_byte(srv: Server) -> None:
    with httpx.stream("POST", f"{srv.url}/api/extra/generate/stream", json=ZA, timeout=60) as r:
        assert r.status_code == 400
        assert "[z-a]" in json.loads(r.read())["detail"]["msg"]
