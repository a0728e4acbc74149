"""Server-level behaviour that needs a server of its own: worker crashes, --password, --multiuser,
and the supervisor never loading llama.cpp."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import psutil
import pytest

from tests.conftest import Server, start_server


def test_worker_killed_mid_stream_then_next_request_works(fresh_server: Server) -> None:
    srv = fresh_server
    pid = srv.worker_pid()
    assert pid
    with httpx.stream("POST", f"{srv.url}/api/extra/generate/stream", timeout=60,
                      json={"prompt": "Once upon a time", "max_length": 500, "temperature": 0,
                            "ban_eos_token": True}) as r:
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data:"):
                os.kill(pid, signal.SIGKILL)
                break
        rest = "\n".join(lines)
    assert "event: error" in rest
    error = json.loads(rest.split("event: error\ndata: ", 1)[1].split("\n", 1)[0])
    assert "crashed: killed by SIGKILL" in error["detail"]["msg"]
    assert "SmolLM2-135M-Instruct.Q4_1" in error["detail"]["msg"]
    # The server is still up, and the next request starts a fresh worker.
    r = httpx.post(f"{srv.url}/api/v1/generate", json={"prompt": "Hi", "max_length": 4, "temperature": 0}, timeout=60)
    assert r.status_code == 200
    status = srv.pool()["instances"][0]
    assert status["pid"] != pid and status["restarts"] == 1 and "SIGKILL" in status["last_exit"]
    assert "worker crashed" in srv.log()


def test_worker_killed_while_idle_and_openai_stream_gets_the_error(fresh_server: Server) -> None:
    srv = fresh_server
    pid = srv.worker_pid()
    os.kill(pid or 0, signal.SIGSEGV)
    wait_for_pool(srv, lambda pool: pool["instances"][0]["state"] == "crashed" or pool["instances"][0]["pid"] != pid)
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
    r = client.completions.create(model="SmolLM2-135M-Instruct.Q4_1", prompt="Hi", max_tokens=4, temperature=0)
    assert r.choices[0].text  # the idle crash was noticed, a new worker serves
    pid = srv.worker_pid()
    stream = client.chat.completions.create(model="SmolLM2-135M-Instruct.Q4_1", stream=True, max_tokens=400,
                                            messages=[{"role": "user", "content": "Write a long story."}])
    with pytest.raises(openai.APIError, match="killed by SIGABRT"):
        for i, _chunk in enumerate(stream):
            if i == 2:
                os.kill(pid or 0, signal.SIGABRT)


def wait_for_perf(server: Server, done: Callable[[dict], bool], timeout: float = 30.0) -> dict:
    """Poll ``/api/extra/perf`` until ``done`` holds for it; fail (not pass with a stale value) otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        perf = httpx.get(f"{server.url}/api/extra/perf").json()
        if done(perf):
            return perf
        assert time.monotonic() < deadline, f"never reached: {perf}"


def wait_for_pool(server: Server, done: Callable[[dict], bool], timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        pool = server.pool()
        if done(pool):
            return pool
        assert time.monotonic() < deadline, f"never reached: {pool}"


def test_password_protects_generation(model_path: Path, tmp_path: Path) -> None:
    srv = start_server(["--model", str(model_path), "--contextsize", "512", "--password", "s3cret"], tmp_path)
    try:
        body = {"prompt": "Hi", "max_length": 2}
        r = httpx.post(f"{srv.url}/api/v1/generate", json=body)
        assert r.status_code == 401
        assert r.json() == {"detail": {"error": "Unauthorized", "msg": "Authentication key is missing or invalid.",
                                       "type": "unauthorized"}}
        assert httpx.post(f"{srv.url}/api/v1/generate", json=body,
                          headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.post(f"{srv.url}/api/v1/generate", json=body,
                          headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert httpx.get(f"{srv.url}/api/v1/model").json() == {"result": "koboldcpp/protected-model"}
        assert httpx.get(f"{srv.url}/api/extra/version").json()["protected"] is True
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=f"{srv.url}/v1", api_key="nope", max_retries=0).completions.create(
                model="SmolLM2-135M-Instruct.Q4_1", prompt="x", max_tokens=1)
        ok = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="s3cret", max_retries=0).completions.create(
            model="SmolLM2-135M-Instruct.Q4_1", prompt="x", max_tokens=1)
        assert ok.usage is not None and ok.usage.completion_tokens == 1
        assert "s3cret" not in srv.log()
    finally:
        srv.stop()


def test_multiuser_queue_then_busy(model_path: Path, tmp_path: Path) -> None:
    # --multiuser 2: one running plus one waiting; a third concurrent request is refused with 503.
    srv = start_server(["--model", str(model_path), "--contextsize", "512", "--multiuser", "2"], tmp_path)
    try:
        statuses: list[int] = []
        body = {"prompt": "Once upon a time", "max_length": 120, "temperature": 0, "ban_eos_token": True}

        def call() -> None:
            statuses.append(httpx.post(f"{srv.url}/api/v1/generate", json=body, timeout=60).status_code)

        threads = [threading.Thread(target=call) for _ in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while httpx.get(f"{srv.url}/api/extra/perf").json()["queue"] < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        busy = httpx.post(f"{srv.url}/api/v1/generate", json=body, timeout=60)
        assert busy.status_code == 503
        assert busy.json() == {"detail": {"msg": "Server is busy; please try again later.",
                                          "type": "service_unavailable"}}
        assert busy.headers["retry-after"] == "1"
        for t in threads:
            t.join(60)
        assert statuses == [200, 200]
    finally:
        srv.stop()


def test_supervisor_never_maps_llama_cpp(server: Server) -> None:
    httpx.post(f"{server.url}/api/v1/generate", json={"prompt": "Hi", "max_length": 2}, timeout=60)
    maps = Path(f"/proc/{server.process.pid}/maps").read_text()
    assert "libllama" not in maps and "libggml" not in maps
    worker_maps = Path(f"/proc/{server.worker_pid()}/maps").read_text()
    assert "libllama" in worker_maps  # the check above can fail: the worker does map it


def test_sigterm_stops_workers_and_exits_cleanly(model_path: Path, tmp_path: Path) -> None:
    srv = start_server(["--model", str(model_path), "--contextsize", "512"], tmp_path)
    worker = srv.worker_pid()
    assert srv.stop() == 0
    assert worker is not None and not psutil.pid_exists(worker)


def test_nomodel_server_answers_and_explains(tmp_path: Path) -> None:
    srv = start_server(["--nomodel"], tmp_path)
    try:
        assert httpx.get(f"{srv.url}/api/v1/model").json() == {"result": "koboldcpp/inactive"}
        assert httpx.get(f"{srv.url}/api/extra/version").json()["llm"] is False
        r = httpx.post(f"{srv.url}/api/v1/generate", json={"prompt": "x"})
        assert r.status_code == 404 and "no model is loaded" in r.json()["detail"]["msg"]
        assert httpx.get(f"{srv.url}/v1/models").json()["data"] == []
    finally:
        srv.stop()


def test_client_leaving_a_stream_stops_the_generation(server: Server) -> None:
    body = {"prompt": "Once upon a time", "max_length": 1500, "temperature": 0, "ban_eos_token": True,
            "max_context_length": 2048}
    before = httpx.get(f"{server.url}/api/extra/perf").json()["total_gens"]
    with httpx.stream("POST", f"{server.url}/api/extra/generate/stream", json=body, timeout=60) as r:
        for n, _line in enumerate(r.iter_lines()):
            if n > 6:
                break  # leave after a few tokens: the connection closes here
    perf = wait_for_perf(server, lambda perf: perf["total_gens"] > before and perf["idle"] == 1)
    assert perf["last_token_count"] < 1000, perf  # cancelled, not run to 1500 tokens
