"""KoboldCpp's samplers on the real model, through the HTTP API: each test fails when its sampler is not applied.

The premise of each test is asserted too (greedy decoding repeats; greedy output contains the phrase to ban), so a
change of model cannot turn a test into one that passes whatever the worker does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.api.test_kobold import sse_events
from tests.conftest import Server, Servers

REPEAT = "Write the word 'hello' ten times: hello hello"
FRANCE = "The capital of France is"
PHRASE = "United States"  # greedy decoding after FRANCE writes it, in two tokens or more
GREEDY = {"temperature": 0, "max_length": 40}


@pytest.fixture(scope="module")
def srv(module_servers: Servers, model_path: Path) -> Server:
    return module_servers.start("--model", str(model_path), "--contextsize", "1024")


def kobold(server: Server, prompt: str, **fields: Any) -> dict[str, Any]:
    r = httpx.post(f"{server.url}/api/v1/generate", json={"prompt": prompt, **fields}, timeout=120)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()["results"][0]
    return result


def text(server: Server, prompt: str, **fields: Any) -> str:
    return str(kobold(server, prompt, **fields)["text"])


def test_dry_stops_a_repetition_that_greedy_decoding_makes(srv: Server) -> None:
    assert "hello hello hello hello hello" in text(srv, REPEAT, **GREEDY)
    dry = text(srv, REPEAT, **GREEDY, dry_multiplier=2.0, dry_base=1.75, dry_allowed_length=2,
               dry_sequence_breakers=json.dumps(["\n", ":"]))  # as SillyTavern sends them: a JSON string
    assert "hello hello hello" not in dry


def test_xtc_excludes_the_top_choice(srv: Server) -> None:
    near_greedy = {"temperature": 0.01, "sampler_seed": 7, "max_length": 30}
    assert text(srv, FRANCE, **near_greedy).startswith(" Paris")  # " Paris" is far the most likely
    assert not text(srv, FRANCE, **near_greedy, xtc_probability=1.0, xtc_threshold=0.05).startswith(" Paris")


HOT = {"temperature": 4.0, "top_k": 0, "top_p": 1.0, "sampler_seed": 11, "max_length": 24}


@pytest.mark.parametrize("fields", [
    {"nsigma": 1.0}, {"top_a": 0.5}, {"tfs": 0.5}, {"smoothing_factor": 4.0}, {"dynatemp_range": 3.9},
])
def test_each_sampler_changes_a_seeded_output(srv: Server, fields: dict[str, Any]) -> None:
    """At temperature 4 the output is noise; every one of these samplers cuts or reshapes it, so the same seed
    gives another text (dynamic temperature: 4 ± 3.9 follows the model's entropy)."""
    assert text(srv, FRANCE, **HOT, **fields) != text(srv, FRANCE, **HOT)


def test_rep_pen_slope_softens_the_penalty_of_older_tokens(srv: Server) -> None:
    """Slope 0: tokens only in the older half of the range are not penalised at all, so greedy output changes."""
    pen = {**GREEDY, "rep_pen": 1.3, "rep_pen_range": 64}
    flat = text(srv, REPEAT, **pen)
    assert flat != text(srv, REPEAT, **GREEDY)  # the penalty itself works
    assert text(srv, REPEAT, **pen, rep_pen_slope=0.0) != flat


def test_sampler_order_leaves_out_the_samplers_it_does_not_name(srv: Server) -> None:
    with_top_a = text(srv, FRANCE, **HOT, top_a=0.5)
    without = text(srv, FRANCE, **HOT, top_a=0.5, sampler_order=[6, 0, 2, 3, 4, 5])  # no 1: no top_a
    assert without == text(srv, FRANCE, **HOT) != with_top_a


def test_a_banned_phrase_that_greedy_decoding_writes_never_appears(srv: Server) -> None:
    assert PHRASE in text(srv, FRANCE, **GREEDY)
    tokens = httpx.post(f"{srv.url}/api/extra/tokenize", json={"prompt": " " + PHRASE}, timeout=30).json()["ids"]
    assert len(tokens) > 1  # a logit bias could not ban it
    banned = {**GREEDY, "banned_tokens": [PHRASE.lower()]}  # case does not matter, as in KoboldCpp
    result = text(srv, FRANCE, **banned)
    assert PHRASE.lower() not in result.lower() and result.startswith(" Paris.")
    with httpx.stream("POST", f"{srv.url}/api/extra/generate/stream", json={"prompt": FRANCE, **banned},
                      timeout=120) as r:
        events = sse_events(r.read().decode())
    pieces = [d["token"] for _, d in events]
    assert "".join(pieces) == result
    assert all("united" not in p.lower() or "states" not in p.lower() for p in pieces)


def test_custom_token_bans_keep_a_token_out_on_both_routes(srv: Server) -> None:
    assert text(srv, FRANCE, **GREEDY).startswith(" Paris")
    (paris,) = httpx.post(f"{srv.url}/api/extra/tokenize", json={"prompt": " Paris"}, timeout=30).json()["ids"]
    assert " Paris" not in text(srv, FRANCE, **GREEDY, custom_token_bans=f"{paris},13")  # KoboldCpp's string form
    r = httpx.post(f"{srv.url}/v1/completions", timeout=120, json={  # SillyTavern's route, KoboldCpp's field
        "prompt": FRANCE, "max_tokens": 20, "temperature": 0, "custom_token_bans": str(paris)})
    assert r.status_code == 200 and " Paris" not in r.json()["choices"][0]["text"]
    bad = httpx.post(f"{srv.url}/api/v1/generate", json={"prompt": FRANCE, "custom_token_bans": "13,x"}, timeout=30)
    assert bad.status_code == 400 and "custom_token_bans" in bad.text
    outside = httpx.post(f"{srv.url}/api/v1/generate", json={"prompt": FRANCE, "custom_token_bans": "99999999"},
                         timeout=30)
    assert outside.status_code == 400 and "custom_token_bans" in outside.text


CHAT = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"  # greedy: "The answer is: 4", then EOS


def test_bypass_eos_goes_on_past_the_end_of_the_answer_and_render_special_shows_it(srv: Server) -> None:
    plain = kobold(srv, CHAT, temperature=0, max_length=60)
    assert plain["finish_reason"] == "stop"  # the premise: greedy decoding ends the answer with <|im_end|>
    through = kobold(srv, CHAT, temperature=0, max_length=60, bypass_eos=True)
    assert through["finish_reason"] == "length" and through["text"].startswith(plain["text"])
    shown = kobold(srv, CHAT, temperature=0, max_length=60, bypass_eos=True, render_special=True)
    assert shown["text"].startswith(plain["text"] + "<|im_end|>")


def test_banned_phrase_on_the_openai_stream(srv: Server) -> None:
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
    stream = client.completions.create(model="any", prompt=FRANCE, max_tokens=40, temperature=0, stream=True,
                                       extra_body={"banned_strings": [PHRASE]})
    streamed = "".join(c.choices[0].text for c in stream if c.choices)
    assert PHRASE not in streamed and streamed.startswith(" Paris.")


def _check(token_logprobs: list[float], tops: list[list[float]]) -> None:
    assert token_logprobs and all(lp <= 0 for lp in token_logprobs)
    for chosen, top in zip(token_logprobs, tops, strict=True):
        assert top == sorted(top, reverse=True) and all(lp <= 0 for lp in top)
        assert chosen == pytest.approx(top[0], abs=1e-5)  # greedy picks the most likely token


def test_openai_completion_logprobs(srv: Server) -> None:
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
    r = client.completions.create(model="any", prompt=FRANCE, max_tokens=8, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None
    assert lp.top_logprobs is not None and lp.text_offset is not None
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.tokens) == 8
    assert all(len(t) == 3 for t in lp.top_logprobs)
    _check(lp.token_logprobs, [list(t.values()) for t in lp.top_logprobs])
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(8)]


def test_openai_chat_logprobs_and_stream(srv: Server) -> None:
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": "Name a colour."}]
    r = client.chat.completions.create(model="any", messages=messages, max_tokens=6, temperature=0, logprobs=True,
                                       top_logprobs=2)
    content = r.choices[0].logprobs.content if r.choices[0].logprobs else None
    assert content is not None and len(content) == 6
    assert "".join(c.token for c in content) == r.choices[0].message.content
    assert all(bytes(c.bytes or []) == c.token.encode() for c in content)
    _check([c.logprob for c in content], [[t.logprob for t in c.top_logprobs] for c in content])
    chunks = list(client.chat.completions.create(model="any", messages=messages, max_tokens=6, temperature=0,
                                                 logprobs=True, top_logprobs=2, stream=True))
    streamed = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    assert len(streamed) == 1 and streamed[0].content is not None
    assert [c.token for c in streamed[0].content] == [c.token for c in content]


def test_kobold_logprobs_and_last_logprobs(srv: Server) -> None:
    result = kobold(srv, FRANCE, **GREEDY | {"max_length": 5}, logprobs=True, genkey="KCPP1234")
    content = result["logprobs"]["content"]
    assert len(content) == 5 and all(len(c["top_logprobs"]) == 5 for c in content)
    _check([c["logprob"] for c in content], [[t["logprob"] for t in c["top_logprobs"]] for c in content])
    last = httpx.post(f"{srv.url}/api/extra/last_logprobs", json={"genkey": "KCPP1234"}, timeout=30).json()
    assert last == {"logprobs": result["logprobs"]}
    other = httpx.post(f"{srv.url}/api/extra/last_logprobs", json={"genkey": "KCPP9999"}, timeout=30).json()
    assert other == {"logprobs": None}
    assert kobold(srv, FRANCE, **GREEDY | {"max_length": 5})["logprobs"] is None


def test_parallel_requests_refuse_a_banned_phrase_of_several_tokens(servers: Servers, model_path: Path) -> None:
    srv = servers.start("--model", str(model_path), "--contextsize", "1024", "--parallelrequests", "2")
    r = httpx.post(f"{srv.url}/api/v1/generate", json={"prompt": FRANCE, **GREEDY, "banned_strings": [PHRASE]},
                   timeout=120)
    assert r.status_code == 400 and "banned string" in r.text
    content = kobold(srv, FRANCE, **GREEDY | {"max_length": 4}, logprobs=True)["logprobs"]["content"]
    _check([c["logprob"] for c in content], [[t["logprob"] for t in c["top_logprobs"]] for c in content])
