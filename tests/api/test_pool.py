"""The pool with real workers: two catalog entries and a budget that fits one.

Entries ``a`` and ``b`` are .kcpps files in an admin directory, both on the default model (so both are
real), with a memory budget that holds one of them: every switch between them evicts the other. What
needs no real model or server (swaps, handles, waiting, pinning, keep-alive, the budget's refusals) is
tested in-process, in ``test_pool_inprocess.py`` (hot swaps and reloads too, on the real catalog with fake
workers); here is what needs a real server or the real engine: the admin directory's files as the server
sees them, a file llama.cpp refuses, the events stream, the admin key.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, start_server, write_entries

BODY = {"prompt": "Once upon a time", "max_length": 8, "temperature": 0}


@pytest.fixture
def admindir(tmp_path: Path, model_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    return write_entries(folder, model_path, {"a": 512, "b": 768})


def pool_server(tmp_path: Path, admindir: Path, *extra: str) -> Server:
    # 200M holds one of them (~170 MiB each), never both, even when another process maps the same
    # GGUF and PSS gives each worker only a share of its pages.
    return start_server(["--nomodel", "--admin", "--admindir", str(admindir), "--memory-budget", "200M",
                         "--no-warm-spare", *extra], tmp_path)


@pytest.fixture
def srv(tmp_path: Path, admindir: Path) -> Iterator[Server]:
    server = pool_server(tmp_path, admindir)
    yield server
    server.stop()


def instance(server: Server, name: str) -> dict:
    return next(i for i in server.pool()["instances"] if i["name"] == name)


def wait_for(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached")


def test_clients_name_files_in_the_directory_and_the_operators_links_are_followed(
        srv: Server, admindir: Path, tmp_path: Path, model_path: Path) -> None:
    """A client may only name a file directly in the admin directory (no path, no ``..``); a link the operator
    put there is followed wherever it points (Hugging Face's cache is a tree of links)."""
    elsewhere = tmp_path / "hf-cache" / "blobs"
    elsewhere.mkdir(parents=True)
    (elsewhere / "abc123").symlink_to(model_path)
    (admindir / "linked.gguf").symlink_to(elsewhere / "abc123")
    (admindir / "dangling.gguf").symlink_to(tmp_path / "nowhere.gguf")
    c = srv.client()
    assert c.get("/api/admin/list_options").json() == ["a.kcpps", "b.kcpps", "linked.gguf", "unload_model"]
    for name in ("../hf-cache/blobs/abc123", "/etc/passwd", "a.kcpps/../../x.gguf", "dangling.gguf"):
        r = c.post("/api/admin/reload_config", json={"filename": name}).json()
        assert r["success"] is False, name
    # (at a.kcpps's context: the default 8192 would not fit this server's budget)
    swap = c.post("/api/admin/reload_config", json={"filename": "linked.gguf", "overrideconfig": "a.kcpps"}).json()
    assert swap["success"] is True and swap["active"] == "linked~a"
    assert c.post("/api/v1/generate", json=BODY).status_code == 200
    # Every file not served is named, with why, when the catalog next scans the directory (every 5 s).
    wait_for(lambda: "dangling.gguf reason=a link to" in srv.log())


def test_load_failure_is_quarantined_until_the_file_changes(tmp_path: Path, admindir: Path) -> None:
    from tests.unit.test_gguf_reader import write_gguf

    broken = admindir / "broken.gguf"
    write_gguf(broken)  # a valid GGUF header that llama.cpp cannot load (no real architecture data)
    server = pool_server(tmp_path, admindir)
    try:
        c = server.client()
        first = c.post("/m/broken/api/v1/generate", json=BODY)
        assert first.status_code == 502 and first.json()["detail"]["type"] == "worker_load_failed"
        second = c.post("/m/broken/api/v1/generate", json=BODY)
        assert second.status_code == 503 and "quarantined" in second.json()["detail"]["msg"]
        assert instance(server, "broken")["state"] == "load_failed"
        os.utime(broken, (time.time() + 5, time.time() + 5))  # "fixed" (changed): tried again
        assert c.post("/m/broken/api/v1/generate", json=BODY).status_code == 502
    finally:
        server.stop()


def test_pool_events_and_metrics(srv: Server) -> None:
    events: list[str] = []

    def listen() -> None:
        with httpx.stream("GET", f"{srv.url}/api/pool/events", timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("event: "):
                    events.append(line[7:])
                if "ready" in events:
                    return

    t = threading.Thread(target=listen)
    t.start()
    wait_for(lambda: "snapshot" in events)
    srv.client().post("/m/a/api/v1/generate", json=BODY)
    t.join(30)
    changes = [e for e in events if e not in ("usage", "progress", "measured")]
    assert changes[:3] == ["snapshot", "loading", "ready"]
    assert "usage" in events and "progress" in events  # a request was admitted; the load reported progress
    text = httpx.get(f"{srv.url}/metrics").text
    assert 'warren_model_state{model="a",state="ready"} 1' in text
    assert 'warren_model_requests_total{model="a"} 1' in text
    assert 'warren_model_loads_total{model="a"} 1' in text
    assert "warren_memory_budget_bytes 209715200" in text


def test_admin_api_needs_the_admin_password(tmp_path: Path, admindir: Path) -> None:
    server = pool_server(tmp_path, admindir, "--adminpassword", "root")
    try:
        assert httpx.get(f"{server.url}/api/pool").status_code == 401
        assert httpx.get(f"{server.url}/api/admin/list_options").json() == []
        assert httpx.post(f"{server.url}/api/admin/reload_config", json={"filename": "a.kcpps"}).json() == \
            {"success": False}
        ok = httpx.get(f"{server.url}/api/pool", headers={"Authorization": "Bearer root"})
        assert ok.status_code == 200
    finally:
        server.stop()


def test_admin_api_is_off_beyond_loopback_without_a_password(tmp_path: Path, admindir: Path) -> None:
    server = pool_server(tmp_path, admindir, "--host", "0.0.0.0")
    try:
        r = httpx.get(f"{server.url}/api/pool")
        assert r.status_code == 403 and "--adminpassword" in r.json()["detail"]["msg"]
        assert httpx.get(f"{server.url}/api/admin/list_options").json() == []
    finally:
        server.stop()
