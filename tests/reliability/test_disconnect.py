"""Nothing for clients that have gone (issue 11, item 6, replayed as reported): a client that disconnects cancels
its work wherever it is — generating, queued behind another request, or waiting for room in the budget. The
last case needs no real model and runs in-process (``tests/api/test_pool_inprocess.py``)."""

from __future__ import annotations

import re
import threading

import httpx
import pytest

from tests.conftest import Server, Servers


def counter(srv: Server, name: str, model: str) -> int:
    text = httpx.get(f"{srv.url}/metrics", timeout=10).text
    return int(re.search(rf'warren_model_{name}{{model="{re.escape(model)}"}} (\d+)', text).group(1))  # type: ignore[union-attr]


def status(srv: Server, name: str) -> dict:
    return next(i for i in srv.pool()["instances"] if i["name"] == name)


def wait_until(predicate, what: str) -> None:  # type: ignore[no-untyped-def]
    """Poll the server's state (no sleeping: each poll is a request) until ``predicate`` holds."""
    for _ in range(2000):
        if predicate():
            return
    raise AssertionError(f"never: {what}")


@pytest.fixture(scope="module")
def srv(module_servers: Servers) -> Server:
    # A budget that holds one of the two: b can only load by evicting a.
    return module_servers.start("--nomodel", "--memory-budget", "200M", "--no-warm-spare", "--no-park",
                                "--multiuser", "8", models={"a": 512, "b": 512})


def test_requests_whose_clients_left_stop_generating_and_leave_the_queue(srv: Server) -> None:
    body = {"prompt": "Once upon a time", "max_length": 800, "ban_eos_token": True, "temperature": 0}
    assert httpx.post(f"{srv.url}/m/a/api/v1/generate", json={"prompt": "Hi", "max_length": 1},
                      timeout=60).status_code == 200
    tokens = counter(srv, "tokens_total", "a")

    def impatient() -> None:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up after 1 s and closes its socket
            httpx.post(f"{srv.url}/m/a/api/v1/generate", json=body, timeout=httpx.Timeout(60, read=1))

    threads = [threading.Thread(target=impatient) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    wait_until(lambda: status(srv, "a")["in_flight"] == 0 and status(srv, "a")["queued"] == 0,
               "the abandoned requests are gone")
    # Each was cancelled where it was: the running one mid-way, those queued behind it in the queue (or, if
    # the slot passed to one an instant before its own disconnect was seen, after a token or two). Had they
    # run on, they would have made 2,400 tokens; together they made fewer than one request's 800.
    quick = httpx.post(f"{srv.url}/m/a/api/v1/generate", json={"prompt": "Hi", "max_length": 2}, timeout=60)
    assert quick.status_code == 200
    assert counter(srv, "tokens_total", "a") - tokens - 2 < 800
