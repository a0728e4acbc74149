"""A conversation survives its worker being stopped and warren being restarted (issue 14's disk tier), through
real servers on the real model: with ``--kvcache-dir``, a model evicted and stopped (``--no-park``) or ended
with warren writes its KV state to a file, and its next worker reads it back — the next turn finds its prefix
in the cache and gives the same greedy text as without the stop. A corrupt file is refused, said in the log."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.conftest import Server, Servers
from warren.worker import kvfile

STORY = ("Once upon a time, in a small village by the sea, there lived an old fisherman named Tomas. Every "
         "morning he rowed out before dawn and came back with the tide. ") * 10
MODELS = {"a": 2048, "b": 2048}


def start(servers: Servers, folder: Path) -> Server:
    return servers.start("--nomodel", "--max-models", "1", "--no-park", "--no-warm-spare", "--kvcache-dir",
                         str(folder), models=MODELS)


def complete(srv: Server, model: str, prompt: str) -> dict:
    r = httpx.post(f"{srv.url}/v1/completions", timeout=300,
                   json={"model": model, "prompt": prompt, "max_tokens": 16, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


def cached(result: dict) -> int:
    return int(result["usage"]["prompt_tokens_details"]["cached_tokens"])


def state(srv: Server, model: str) -> str:
    return next(i["state"] for i in srv.pool()["instances"] if i["name"] == model)


def conversation(srv: Server) -> tuple[str, dict]:
    """The next turn of a chat on ``a`` with no stop in between; the cache is then back at the first turn."""
    first = complete(srv, "a", STORY)
    turn = STORY + first["choices"][0]["text"] + " The next day,"
    plain = complete(srv, "a", turn)
    assert cached(plain) > 0.9 * first["usage"]["prompt_tokens"]
    complete(srv, "a", STORY)
    return turn, plain


def test_a_stopped_model_and_a_restarted_warren_keep_the_conversation(servers: Servers, tmp_path: Path) -> None:
    srv = start(servers, tmp_path)
    turn, plain = conversation(srv)
    complete(srv, "b", "Hello")  # a is evicted and stopped (--no-park): its state goes to disk first
    for _ in range(3000):  # each poll is a request: this waits on the server's state, it does not sleep
        if state(srv, "a") == "unloaded":
            break
    assert state(srv, "a") == "unloaded" and kvfile.usage(tmp_path)[0] >= 1
    assert srv.pool()["kv_state"] == 0  # files on disk count nothing against the memory budget
    reloaded = complete(srv, "a", turn)
    assert reloaded["choices"][0]["text"] == plain["choices"][0]["text"]
    assert cached(reloaded) == cached(plain)
    assert "KV state restored model=a from=disk" in srv.log()

    complete(srv, "a", STORY)  # the cache at the first turn again: what warren's shutdown writes
    assert srv.stop() == 0
    restarted = start(servers, tmp_path)
    after = complete(restarted, "a", turn)
    assert after["choices"][0]["text"] == plain["choices"][0]["text"]
    assert cached(after) == cached(plain)


def test_a_corrupt_file_is_refused_with_a_warning(servers: Servers, tmp_path: Path) -> None:
    srv = start(servers, tmp_path)
    turn, plain = conversation(srv)
    assert srv.stop() == 0
    (path,) = tmp_path.glob("*" + kvfile.SUFFIX)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0x55
    path.write_bytes(bytes(raw))
    restarted = start(servers, tmp_path)
    after = complete(restarted, "a", turn)
    assert cached(after) == 0 and after["choices"][0]["text"] == plain["choices"][0]["text"]
    warning = next(line for line in restarted.log().splitlines() if "KV state file ignored model=a" in line)
    assert "checksum mismatch" in warning and not path.exists()
