"""The load test in a bounded form: concurrent clients, two models, a budget for one (the full form
is ``benchmarks/load_test.py``). Every request completes or gets a clean 503; nothing deadlocks;
the supervisor's memory stays bounded; no worker outlives the server."""

from __future__ import annotations

import importlib.util
import socket
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.conftest import ROOT


def load_module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("load_test", ROOT / "benchmarks" / "load_test.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["load_test"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_bounded_load(tmp_path: Path, model_path: Path) -> None:
    lt = load_module()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = lt.start_server(tmp_path, model_path, port)
    try:
        lt.wait_until_up(url)
        sup = psutil.Process(server.pid)
        rss0 = sup.memory_info().rss
        result = lt.run_load(url, clients=6, requests=6, max_tokens=4, deadline_s=240)
        assert result.total == 36, result.outcomes  # nothing hung: every request ended
        assert result.errors == [], result.errors[:5]
        assert result.outcomes["ok"] + result.outcomes["abandoned"] >= 18
        assert sup.memory_info().rss - rss0 < 30 * 2**20
        pool = httpx.get(f"{url}/api/pool").json()
        assert pool["reserved"] <= pool["budget"]
        assert httpx.post(f"{url}/m/a/api/v1/generate", json={"prompt": "Hi", "max_length": 2}).status_code == 200
        workers = [p.pid for p in sup.children(recursive=True)]
    finally:
        server.terminate()
        assert server.wait(30) == 0
    deadline = time.monotonic() + 5
    while any(psutil.pid_exists(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in workers if psutil.pid_exists(p)]
