"""Real signals on real workers behind a real server, in every dialect; shutdown by SIGTERM and SIGKILL.

Three catalog entries (one per dialect, so each has fewer model-level crashes — SIGKILL — than the
crash-loop limit) and a fourth, ``other``, that keeps serving while the others crash. A SIGSEGV or
SIGABRT during a request is charged to that request (refused if sent again), so each signal gets its
own prompt.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import ROOT, Server, Servers, free_port, start_server, write_entries

STREAMS = {
    "kobold": lambda m: ("/m/" + m + "/api/extra/generate/stream",
                         {"prompt": "Once upon a time", "max_length": 400, "ban_eos_token": True}),
    "openai": lambda m: ("/v1/completions", {"model": m, "prompt": "Once upon a time", "max_tokens": 400,
                                             "stream": True}),
    "ollama": lambda m: ("/api/generate", {"model": m, "prompt": "Tell a long story.", "stream": True,
                                           "options": {"num_predict": 400}}),
}


@pytest.fixture(scope="module")
def srv(module_servers: Servers) -> Server:
    return module_servers.start("--nomodel", "--no-warm-spare",
                                models=dict.fromkeys(("kobold", "openai", "ollama", "other"), 768))


def wait_for(predicate, what: str, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` (each poll asks the server or a thread's state) until it holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        time.sleep(0.02)


def status(srv: Server, name: str) -> dict:
    return next(i for i in srv.pool()["instances"] if i["name"] == name)


def load(srv: Server, name: str) -> int:
    r = httpx.post(f"{srv.url}/api/models/{name}/load", json={}, timeout=60)
    assert r.status_code == 200, r.text
    return int(r.json()["pid"])


@pytest.mark.parametrize("dialect", ["kobold", "openai", "ollama"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT])
def test_worker_killed_mid_stream(srv: Server, dialect: str, sig: signal.Signals) -> None:
    pid = load(srv, dialect)
    path, body = STREAMS[dialect](dialect)
    body = {**body, "prompt": f"{body['prompt']} ({sig.name})"}  # a crash is charged to its request
    lines: list[str] = []
    with httpx.stream("POST", f"{srv.url}{path}", json=body, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            lines.append(line)
            if len([x for x in lines if x.strip()]) == 3:
                os.kill(pid, sig)
    tail = "\n".join(lines[-3:])
    assert f"killed by {sig.name}" in tail and dialect in tail, tail  # the error names the model and signal
    assert not psutil.pid_exists(pid)
    assert httpx.post(f"{srv.url}/m/other/api/v1/generate", json={"prompt": "Hi", "max_length": 2},
                      timeout=60).status_code == 200  # other models keep serving
    r = httpx.post(f"{srv.url}/m/{dialect}/api/v1/generate", json={"prompt": "Hi", "max_length": 2}, timeout=60)
    assert r.status_code == 200  # and the model itself recovers
    assert status(srv, dialect)["pid"] != pid
    if sig is not signal.SIGKILL:  # SIGKILL is the model's (out of memory?); the others are the request's
        again = httpx.post(f"{srv.url}{path}", json=body, timeout=60)
        assert again.status_code == 400 and "crashed the worker" in again.text, again.text
        assert "quarantined" not in status(srv, dialect)


def test_worker_killed_while_idle(srv: Server) -> None:
    pid = load(srv, "other")
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while status(srv, "other")["state"] != "crashed" and time.monotonic() < deadline:
        time.sleep(0.05)
    s = status(srv, "other")
    assert s["state"] == "crashed" and s["last_exit_kind"] == "oom_suspected" and "SIGKILL" in s["last_exit"]
    assert s["memory"]["reserved"] == 0  # its memory is no longer counted
    assert httpx.post(f"{srv.url}/m/other/api/v1/generate", json={"prompt": "Hi", "max_length": 2},
                      timeout=60).status_code == 200


def test_sigterm_finishes_in_flight_work_and_stops_every_worker(tmp_path: Path, model_path: Path) -> None:
    server = start_server(["--model", str(model_path), "--contextsize", "512"], tmp_path)
    worker = server.worker_pid()
    children = [p.pid for p in psutil.Process(server.process.pid).children(recursive=True)]
    events: list[str] = []

    def stream() -> None:
        with httpx.stream("POST", f"{server.url}/api/extra/generate/stream", timeout=60,
                          json={"prompt": "Once", "max_length": 20, "ban_eos_token": True}) as r:
            events.extend(line for line in r.iter_lines() if line.startswith("data:"))

    t = threading.Thread(target=stream)
    t.start()
    wait_for(lambda: bool(events) or not t.is_alive(), "the stream began")
    assert server.stop() == 0  # SIGTERM
    t.join(30)
    assert events and json.loads(events[-1][5:])["finish_reason"] == "length"  # it was allowed to finish
    assert worker is not None and not psutil.pid_exists(worker)
    assert not [p for p in children if psutil.pid_exists(p)]


def test_sigterm_ends_every_stream_and_queued_request_in_its_dialect(tmp_path: Path, model_path: Path) -> None:
    """Issue 11, item 10: streams longer than the grace were cut with no final or error event, and a queued
    request got plain-text "Internal Server Error". Now a queued request gets its dialect's 503 at once, and a
    stream still running when the grace ends gets its dialect's error event, then a clean end."""
    (tmp_path / "models").mkdir()
    # Greedy, each of these runs past 1,500 tokens without an end of text: every stream is still running
    # when the 10 s grace ends, whatever this machine's speed (three models on fewer cores take turns).
    folder = write_entries(tmp_path / "models", model_path, dict.fromkeys(("kobold", "openai", "ollama"), 4096))
    server = start_server(["--nomodel", "--models-dir", str(folder), "--no-warm-spare", "--multiuser", "4"], tmp_path)
    lines: dict[str, list[str]] = {d: [] for d in STREAMS}

    def stream(dialect: str) -> None:
        path, body = STREAMS[dialect](dialect)
        body = {**body, "max_length": 4000, "max_tokens": 4000, "temperature": 0,
                "options": {"num_predict": 4000, "temperature": 0}}
        with httpx.stream("POST", f"{server.url}{path}", json=body, timeout=120) as r:
            lines[dialect].extend(line for line in r.iter_lines() if line.strip())

    threads = [threading.Thread(target=stream, args=(d,)) for d in STREAMS]
    for t in threads:
        t.start()
    wait_for(lambda: all(lines.values()), "every stream began")
    queued: list[httpx.Response] = []
    waiter = threading.Thread(target=lambda: queued.append(httpx.post(
        f"{server.url}/m/kobold/api/v1/generate", json={"prompt": "Hi", "max_length": 4}, timeout=120)))
    waiter.start()
    wait_for(lambda: httpx.get(f"{server.url}/m/kobold/api/extra/perf").json()["queue"] == 1, "a request queued")
    server.process.send_signal(signal.SIGTERM)
    waiter.join(60)
    assert queued[0].status_code == 503
    assert queued[0].json() == {"detail": {"msg": "the server is shutting down", "type": "service_unavailable"}}
    for t in threads:
        t.join(60)
    assert server.process.wait(30) == 0
    kobold, openai_, ollama_ = lines["kobold"], lines["openai"], lines["ollama"]
    cut = "the server is shutting down; the generation was cut short"
    assert kobold[-2] == "event: error"
    assert json.loads(kobold[-1][5:]) == {"detail": {"msg": cut, "type": "service_unavailable"}}
    assert json.loads(openai_[-1][6:]) == {"error": {"message": cut, "type": "server_error", "param": None,
                                                     "code": "shutting_down"}}
    assert json.loads(ollama_[-1]) == {"error": cut}


def test_killed_supervisor_takes_its_workers_along(tmp_path: Path, model_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "warren", str(model_path), str(port), "--contextsize", "512"],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        children: list[int] = []
        while time.monotonic() < deadline and len(children) < 2:  # the model's worker and the warm spare
            time.sleep(0.1)
            children = [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]
        assert children
        proc.kill()
        proc.wait()
        deadline = time.monotonic() + 2.0
        while any(psutil.pid_exists(p) for p in children) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not [p for p in children if psutil.pid_exists(p)], "workers outlived their killed supervisor"
    finally:
        proc.kill()
