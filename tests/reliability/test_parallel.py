"""Several users on one model (issue 13, ``--parallelrequests N``): the worker serves N requests at once from
one context, each sequence with its own sampler, stop strings and cancellation. Proven on a real worker:
greedy output of each request served among others equals the same request served alone; all N stream at
once (each has its first token before any ends); a KoboldCpp genkey sees and aborts only its own request."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, Servers

PROMPTS = ["Once upon a time", "The capital of France is", "def fibonacci(n):", "List three colours:"]


@pytest.fixture(scope="module")
def srv(module_servers: Servers, model_path: Path) -> Server:
    # Flash attention on, whatever this CPU's probe chose: only with it does a sequence's attention visit its
    # own cells alone, in the same order as when it is served alone (warren/flash_attention.py) — off, the
    # shared cache's masked cells change the order of the sums and greedy text drifts after some tokens.
    return module_servers.start("--model", str(model_path), "--contextsize", "2048", "--no-warm-spare",
                                "--parallelrequests", "4", "--multiuser", "8", "--flashattention")


def generate(srv: Server, prompt: str, **extra: object) -> dict:
    r = httpx.post(f"{srv.url}/api/v1/generate", timeout=120,
                   json={"prompt": prompt, "max_length": 48, "temperature": 0, "ban_eos_token": True, **extra})
    assert r.status_code == 200, r.text
    return r.json()["results"][0]


def tokens(srv: Server, text: str) -> int:
    return int(httpx.post(f"{srv.url}/api/extra/tokencount", json={"prompt": text}, timeout=10).json()["value"])


def test_concurrent_requests_stream_at_once_and_each_equals_its_solo_output(srv: Server) -> None:
    alone = [generate(srv, p)["text"] for p in PROMPTS]
    firsts: dict[int, float] = {}
    ends: dict[int, float] = {}
    texts: dict[int, str] = {}

    def stream(i: int) -> None:
        parts = []
        with httpx.stream("POST", f"{srv.url}/api/extra/generate/stream", timeout=120,
                          json={"prompt": PROMPTS[i], "max_length": 48, "temperature": 0,
                                "ban_eos_token": True}) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    firsts.setdefault(i, time.monotonic())
                    parts.append(json.loads(line[5:])["token"])
        ends[i] = time.monotonic()
        texts[i] = "".join(parts)

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [texts[i] for i in range(len(PROMPTS))] == alone  # independent sequences: the same greedy text
    assert max(firsts.values()) < min(ends.values())  # all four streamed at once: none waited for another's end


def test_stop_strings_lengths_and_grammars_apply_to_their_own_request_only(srv: Server) -> None:
    results: dict[str, dict] = {}
    cases = {"stop": ({"stop_sequence": [" the"]}), "short": {"max_length": 3}, "long": {},
             "grammar": {"grammar": 'root ::= "The answer is " ("yes" | "no") "."'}}
    threads = [threading.Thread(target=lambda k=k, e=e: results.__setitem__(k, generate(srv, PROMPTS[0], **e)))
               for k, e in cases.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # The same prompt in one batch: the sequences compute alike until their own rules end them, so the long
    # one is the reference (a solo run may differ in the last bits of the logits: batched vs one-token decode).
    full = results["long"]["text"]
    assert results["long"]["finish_reason"] == "length" and len(full) > len(results["stop"]["text"])
    assert full.startswith(results["stop"]["text"]) and " the" in full[len(results["stop"]["text"]):]
    assert " the" not in results["stop"]["text"]  # its stop string ended it (KoboldCpp calls that "length" too)
    assert results["short"]["finish_reason"] == "length" and full.startswith(results["short"]["text"])
    assert tokens(srv, results["short"]["text"]) <= 4
    assert results["grammar"]["text"] in ("The answer is yes.", "The answer is no.")  # its own grammar only


def test_a_genkey_sees_and_aborts_only_its_own_request(srv: Server) -> None:
    body = {"max_length": 1000, "temperature": 0, "ban_eos_token": True}
    done: dict[str, dict] = {}
    threads = [threading.Thread(target=lambda k=k: done.__setitem__(k, generate(srv, f"Story {k}:", genkey=k,
                                                                                  **body)))
               for k in ("KCPP1", "KCPP2")]
    for t in threads:
        t.start()

    def partial(key: str) -> str:
        r = httpx.post(f"{srv.url}/api/extra/generate/check", json={"genkey": key}, timeout=10)
        return r.json()["results"][0]["text"]

    for key in ("KCPP1", "KCPP2"):  # both run at once, each visible to its own key
        for _ in range(10_000):  # each poll asks the server: this waits on its state, it does not sleep
            if partial(key):
                break
        assert partial(key)
    assert httpx.post(f"{srv.url}/api/extra/abort", json={"genkey": "KCPP1"}, timeout=10).json() == \
        {"success": "true", "done": "true"}
    threads[0].join(60)
    assert tokens(srv, done["KCPP1"]["text"]) < 500  # cut short (of 1,000: KoboldCpp calls it "length" too)
    assert "KCPP2" not in done  # its neighbour goes on
    assert partial("KCPP2")
    assert httpx.post(f"{srv.url}/api/extra/abort", json={"genkey": "KCPP2"}, timeout=10).status_code == 200
    threads[1].join(60)
    assert tokens(srv, done["KCPP2"]["text"]) < 1000


def test_the_pool_shows_the_requests_in_flight(srv: Server) -> None:
    threads = [threading.Thread(target=generate, args=(srv, p), kwargs={"max_length": 400}) for p in PROMPTS]
    for t in threads:
        t.start()
    seen = 0
    for _ in range(10_000):  # each poll is a request to the server: it waits on the state, not on time
        seen = max(seen, srv.pool()["instances"][0]["in_flight"])
        if seen == len(PROMPTS):
            break
    for t in threads:
        t.join(120)
    assert seen == len(PROMPTS)
