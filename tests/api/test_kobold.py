"""The KoboldCpp API against a real server and the real model: shapes, SSE, fields, errors."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.conftest import Server

GREEDY = {"temperature": 0, "max_length": 16}
PROMPT = "The capital of France is"


def generate(server: Server, **body: object) -> dict:
    r = httpx.post(f"{server.url}/api/v1/generate", json={"prompt": PROMPT, **GREEDY, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for block in text.strip().split("\n\n"):
        lines = block.split("\n")
        assert lines[0].startswith("event: ") and lines[1].startswith("data: "), block
        events.append((lines[0][7:], json.loads(lines[1][6:])))
    return events


def test_generate_shape_and_determinism(server: Server) -> None:
    first = generate(server)
    second = generate(server)
    result = first["results"][0]
    assert set(result) == {"text", "finish_reason", "tool_calls", "logprobs", "prompt_tokens", "completion_tokens"}
    assert result["finish_reason"] == "length" and result["completion_tokens"] == 16
    assert len(result["text"]) > 10 and first == second


def test_stream_is_koboldcpp_sse_and_matches_generate(server: Server) -> None:
    with httpx.stream("POST", f"{server.url}/api/extra/generate/stream", json={"prompt": PROMPT, **GREEDY},
                      timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = sse_events(text)
    assert all(name == "message" for name, _ in events)
    assert all(set(data) == {"token", "finish_reason"} for _, data in events)
    assert [d["finish_reason"] for _, d in events[:-1]] == [None] * (len(events) - 1)
    assert events[-1][1] == {"token": "", "finish_reason": "length"}
    assert "".join(d["token"] for _, d in events) == generate(server)["results"][0]["text"]


def test_memory_is_prepended_and_stop_sequence_trims(server: Server) -> None:
    full = generate(server, prompt=" is", memory="The capital of France")["results"][0]["text"]
    assert full == generate(server)["results"][0]["text"]
    word = full.split()[1]
    cut = generate(server, stop_sequence=[word])["results"][0]
    assert word not in cut["text"] and full.startswith(cut["text"])
    kept = generate(server, stop_sequence=[word], trim_stop=False)["results"][0]
    assert kept["text"].endswith(word)


def test_grammar_banned_tokens_and_logit_bias(server: Server) -> None:
    out = generate(server, prompt="Is the sky blue? Answer:", grammar='root ::= " yes" | " no"')
    assert out["results"][0]["text"] in (" yes", " no")
    base = generate(server)["results"][0]["text"]
    first_word = base.split()[0].strip(".,!")
    banned = generate(server, banned_tokens=[first_word])["results"][0]["text"]
    assert not banned.split() or banned.split()[0] != first_word
    tok = httpx.post(f"{server.url}/api/extra/tokenize", json={"prompt": " " + first_word}).json()["ids"]
    biased = generate(server, logit_bias={str(tok[0]): -100})["results"][0]["text"]
    assert biased != base


def test_seeded_sampling_is_repeatable(server: Server) -> None:
    body = {"temperature": 1.0, "top_k": 40, "top_p": 0.95, "min_p": 0.05, "typical": 0.9, "rep_pen": 1.1,
            "rep_pen_range": 64, "presence_penalty": 0.2, "sampler_seed": 1234, "max_length": 16}
    assert generate(server, **body) == generate(server, **body)
    mirostat = generate(server, mirostat=2, mirostat_tau=4.0, mirostat_eta=0.2, temperature=0.8, sampler_seed=5)
    assert mirostat["results"][0]["completion_tokens"] == 16


def test_info_endpoints(server: Server) -> None:
    c = server.client()
    assert c.get("/api/v1/model").json() == {"result": "koboldcpp/SmolLM2-135M-Instruct.Q4_1"}
    assert c.get("/api/latest/model").json() == {"result": "koboldcpp/SmolLM2-135M-Instruct.Q4_1"}
    assert c.get("/api/v1/info/version").json() == {"result": "1.2.5"}
    version = c.get("/api/extra/version").json()
    assert version["result"] == "KoboldCpp" and version["llm"] is True and version["admin"] == 0
    assert c.get("/api/extra/true_max_context_length").json() == {"value": 2048}
    assert c.get("/api/v1/config/max_context_length").json() == {"value": 2048}
    assert c.get("/api/v1/config/max_length").json() == {"value": 768}
    generate(server)
    perf = c.get("/api/extra/perf").json()
    assert perf["last_token_count"] == 16 and perf["idle"] == 1 and perf["queue"] == 0
    assert perf["stop_reason"] == 0 and perf["total_gens"] >= 1 and perf["last_eval_speed"] > 0


def test_tokenize_tokencount_detokenize(server: Server) -> None:
    c = server.client()
    count = c.post("/api/extra/tokencount", json={"prompt": "Hello world"}).json()
    assert count["value"] == len(count["ids"]) == 2
    assert c.post("/api/extra/detokenize", json={"ids": count["ids"]}).json() == {"result": "Hello world",
                                                                                  "success": True}
    assert c.post("/api/extra/detokenize", json={"ids": [10**9]}).status_code == 400


def test_per_model_prefix(server: Server) -> None:
    c = server.client()
    assert c.get("/m/SmolLM2-135M-Instruct.Q4_1/api/v1/model").json()["result"].endswith("Q4_1")
    r = c.post("/m/SmolLM2-135M-Instruct.Q4_1/api/v1/generate", json={"prompt": PROMPT, **GREEDY})
    assert r.json() == generate(server)
    missing = c.get("/m/nope/api/v1/model")
    assert missing.status_code == 404 and "model 'nope' not found" in missing.json()["detail"]["msg"]


@pytest.mark.parametrize(("body", "words"), [
    (b"{not json", "not valid JSON"),
    (b"[1,2]", "invalid request"),
    (json.dumps({"prompt": "x", "max_length": "lots"}).encode(), "max_length"),
    (json.dumps({"prompt": "x", "temperature": -1}).encode(), "temperature"),
    (json.dumps({"prompt": "x", "top_p": 1.5}).encode(), "top_p"),
    (json.dumps({"prompt": "x", "mirostat": 3}).encode(), "mirostat"),
    (json.dumps({"prompt": "x", "logit_bias": {"abc": 1}}).encode(), "logit_bias"),
    (json.dumps({"prompt": "x", "stop_sequence": ["s"] * 300}).encode(), "stop_sequence"),
    (json.dumps({"prompt": "x", "grammar": "root ::= ("}).encode(), "grammar"),
])
def test_bad_requests_get_400_in_koboldcpp_shape(server: Server, body: bytes, words: str) -> None:
    r = httpx.post(f"{server.url}/api/v1/generate", content=body, timeout=60)
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    assert words in detail["msg"] and detail["type"] == "bad_input"


def test_unknown_fields_are_ignored(server: Server) -> None:
    assert generate(server, top_a=0.5, dry_multiplier=0.8, sampler_order=[6, 0, 1, 3, 4, 2, 5]) == generate(server)


def test_unknown_routes_and_methods(server: Server) -> None:
    c = server.client()
    r = c.get("/api/v1/nothing")
    assert r.status_code == 404 and r.json()["detail"]["type"] == "not_found"
    wrong = c.get("/api/v1/generate")
    assert wrong.status_code == 405 and wrong.json()["detail"]["type"] == "method_not_allowed"


def test_curl_style_form_content_type_is_read_as_json(server: Server) -> None:
    r = httpx.post(f"{server.url}/api/v1/generate", content=json.dumps({"prompt": PROMPT, **GREEDY}),
                   headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and r.json() == generate(server)


def test_genkey_check_and_abort(server: Server) -> None:
    results: dict[str, dict] = {}

    def long_run() -> None:
        results["r"] = generate(server, prompt="Once upon a time", max_length=400, genkey="KCPP1", ban_eos_token=True)

    thread = threading.Thread(target=long_run)
    thread.start()
    c = server.client()
    partial = ""
    deadline = time.monotonic() + 20
    while not partial and time.monotonic() < deadline:
        time.sleep(0.1)
        partial = c.post("/api/extra/generate/check", json={"genkey": "KCPP1"}).json()["results"][0]["text"]
    assert partial, "generate/check never showed the running text to its owner"
    assert c.post("/api/extra/generate/check", json={"genkey": "OTHER"}).json()["results"][0]["text"] == ""
    assert c.post("/api/extra/abort", json={"genkey": "OTHER"}).json() == {"success": "true", "done": "false"}
    assert c.post("/api/extra/abort", json={"genkey": "KCPP1"}).json() == {"success": "true", "done": "true"}
    thread.join(30)
    assert results["r"]["results"][0]["completion_tokens"] < 400
    assert results["r"]["results"][0]["text"].startswith(partial)


def test_nobody_reads_or_aborts_a_request_that_has_no_genkey(server: Server) -> None:
    """Issue 11, item 4: an OpenAI chat (which carries no genkey) was visible to anyone's generate/check and cut
    short by anyone's abort. Now it belongs to its client alone."""
    lines: list[str] = []
    started = threading.Event()

    def chat() -> None:
        body = {"messages": [{"role": "user", "content": "Write a long story."}], "max_tokens": 300,
                "temperature": 0, "stream": True, "logit_bias": {"0": -100, "2": -100, "4": -100}}  # no EOG
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as r:
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    lines.append(line)
                    started.set()

    thread = threading.Thread(target=chat)
    thread.start()
    assert started.wait(30)
    c = server.client()
    assert c.get("/api/extra/generate/check").json() == {"results": [{"text": ""}]}
    assert c.post("/api/extra/generate/check", json={}).json() == {"results": [{"text": ""}]}
    assert c.post("/api/extra/abort", json={}).json() == {"success": "false", "done": "false"}
    thread.join(120)
    last = json.loads(lines[-1][6:])
    assert last["choices"][0]["finish_reason"] == "length"
