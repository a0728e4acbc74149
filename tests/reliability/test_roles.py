"""What the operator set stays set: a generation request cannot unpin, unload or outlast the operator's settings
(issue 11, item 3, replayed as reported), and keep-alive values are bounded."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, Servers

GEN, ADMIN = "K", "K2"


@pytest.fixture(scope="module")
def srv(module_servers: Servers, model_path: Path) -> Server:
    return module_servers.start("--model", str(model_path), "--contextsize", "512", "--password", GEN,
                                "--adminpassword", ADMIN, "--no-warm-spare", models={"a": 512, "b": 512, "c": 512})


def as_user(srv: Server, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{srv.url}{path}", json=body, headers={"Authorization": f"Bearer {GEN}"}, timeout=60)


def status(srv: Server, name: str) -> dict:
    pool = httpx.get(f"{srv.url}/api/pool", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    return next(i for i in pool["instances"] if i["name"] == name)


def test_the_generation_key_cannot_unload_a_pinned_model(srv: Server) -> None:
    pinned = httpx.post(f"{srv.url}/api/models/b/load", json={"pin": True},
                        headers={"Authorization": f"Bearer {ADMIN}"}, timeout=60)
    assert pinned.status_code == 200 and pinned.json()["pinned"] is True
    r = as_user(srv, "/api/generate", {"model": "b", "keep_alive": 0})
    assert r.status_code == 403 and r.json() == {"error": "model 'b' is pinned: a generation request cannot unload it"}
    b = status(srv, "b")
    assert b["pinned"] is True and b["state"] == "ready"


def test_the_generation_key_cannot_unload_the_active_model(srv: Server) -> None:
    active = httpx.get(f"{srv.url}/api/v1/model", headers={"Authorization": f"Bearer {GEN}"}).json()["result"]
    name = active.removeprefix("koboldcpp/")
    assert as_user(srv, "/api/generate", {"model": name, "prompt": "Hi", "options": {"num_predict": 1},
                                          "stream": False}).status_code == 200
    r = as_user(srv, "/api/generate", {"model": name, "keep_alive": 0})
    assert r.status_code == 403 and "the active model" in r.json()["error"]
    assert status(srv, name)["state"] == "ready" and status(srv, name)["keep_alive"] == -1


def test_a_clients_keep_alive_only_shortens_the_operators(srv: Server) -> None:
    for keep in (-1, "10h"):  # "for ever" and "longer": the operator's 300 s stay
        assert as_user(srv, "/api/generate", {"model": "c", "keep_alive": keep}).status_code == 200
        assert status(srv, "c")["keep_alive"] == 300
    assert as_user(srv, "/api/generate", {"model": "c", "keep_alive": "2m"}).status_code == 200
    assert status(srv, "c")["keep_alive"] == 120
    # A pinned model ignores a client's keep-alive altogether.
    assert as_user(srv, "/api/generate", {"model": "b", "keep_alive": "1s"}).status_code == 200
    assert status(srv, "b")["keep_alive"] == 300


@pytest.mark.parametrize("keep", ["nan", "inf", "-inf", 1e300, "1e20h", "1e400"])
def test_keep_alive_values_that_are_no_duration_are_a_400(srv: Server, keep: object) -> None:
    r = as_user(srv, "/api/generate", {"model": "c", "keep_alive": keep})
    assert r.status_code == 400 and "keep_alive" in r.json()["error"]
    ps = httpx.get(f"{srv.url}/api/ps", headers={"Authorization": f"Bearer {GEN}"})
    assert ps.status_code == 200
