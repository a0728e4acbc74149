"""A conversation survives a swap (issue 14), through a real server on the real model: with one model
loaded at a time, a request to another model parks the first with its context and KV cells (counted in the pool's
budget, shown in ``/api/pool``), and the next turn on the first model finds its prefix in the cache and
gives the same greedy text as without the swap."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Server, Servers

STORY = ("Once upon a time, in a small village by the sea, there lived an old fisherman named Tomas. Every "
         "morning he rowed out before dawn and came back with the tide. ") * 10


@pytest.fixture(scope="module")
def srv(module_servers: Servers) -> Server:
    return module_servers.start("--nomodel", "--max-models", "1", "--no-warm-spare", models={"a": 2048, "b": 2048})


def complete(srv: Server, model: str, prompt: str) -> dict:
    r = httpx.post(f"{srv.url}/v1/completions", timeout=300,
                   json={"model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


def kv_state(srv: Server, model: str) -> int:
    return next(i["memory"]["kv_state"] for i in srv.pool()["instances"] if i["name"] == model)


def test_a_swap_keeps_the_conversation_and_its_greedy_text(srv: Server) -> None:
    first = complete(srv, "a", STORY)
    turn = STORY + first["choices"][0]["text"] + " The next day,"
    plain = complete(srv, "a", turn)  # no swap in between
    assert plain["usage"]["prompt_tokens_details"]["cached_tokens"] > 0.9 * first["usage"]["prompt_tokens"]
    complete(srv, "a", STORY)  # the cache back at the first turn, as before the next turn
    complete(srv, "b", "Hello")  # a is parked, with its KV state
    for _ in range(3000):  # each poll is a request: this waits on the server's state, it does not sleep
        if kv_state(srv, "a"):
            break
    pool = srv.pool()
    a = next(i for i in pool["instances"] if i["name"] == "a")
    assert a["state"] == "parked" and a["memory"]["kv_state"] > 1 << 20
    assert a["memory"]["kv_kept"] == "context"  # the budget has room: the whole context stays, nothing is copied
    assert pool["kv_state"] == a["memory"]["kv_state"] and a["memory"]["reserved"] > a["memory"]["kv_state"]
    swapped = complete(srv, "a", turn)
    assert swapped["choices"][0]["text"] == plain["choices"][0]["text"]
    assert swapped["usage"]["prompt_tokens_details"]["cached_tokens"] == \
        plain["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert kv_state(srv, "a") == 0  # back in its context: no longer counted apart
