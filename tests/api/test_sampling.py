"""One definition of the sampling fields for every dialect (``warren/api/sampling.py``), against real servers.

SillyTavern's "Text Completion → KoboldCpp" body goes to ``/v1/completions`` with KoboldCpp's whole field set;
it must be accepted, and the samplers it carries must act there as they do on KoboldCpp's own route.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import ollama
import pytest

from tests.conftest import Server, Servers

PROMPT = "Once upon a time, in a small village, there lived"

# What SillyTavern's KoboldCpp text-completion connection sends next to OpenAI's fields (its sliders' ranges).
SILLYTAVERN = {
    "prompt": PROMPT, "max_tokens": 12, "max_length": 12, "temperature": 3.0, "top_k": -1, "top_p": 1,
    "min_p": 0.1, "typical": 1, "typical_p": 1, "tfs": 1, "top_a": 0, "rep_pen": 1.1, "rep_pen_range": 360,
    "rep_pen_slope": 0.7, "repetition_penalty": 1.1, "presence_penalty": 0, "frequency_penalty": 0,
    "mirostat_mode": 0, "mirostat_tau": 5, "mirostat_eta": 0.1, "sampler_order": [6, 0, 1, 3, 4, 2, 5],
    "sampler_seed": 1234, "seed": 1234, "dynatemp_range": 0, "dynatemp_exponent": 1, "smoothing_factor": 0,
    "smoothing_curve": 1, "nsigma": 0, "dry_multiplier": 0, "dry_base": 1.75, "dry_allowed_length": 2,
    "dry_penalty_last_n": 0, "dry_sequence_breakers": '["\\n", ":", "\\"", "*"]', "xtc_threshold": 0.1,
    "xtc_probability": 0, "banned_strings": [], "banned_tokens": [], "trim_stop": True, "stop": ["\nUser:"],
    "stop_sequence": ["\nUser:"], "grammar": "", "logit_bias": {}, "n": 1, "stream": False,
    "ignore_eos": False, "min_tokens": 0, "skip_special_tokens": True, "use_default_badwordsids": False,
}


@pytest.fixture(scope="module")
def srv(module_servers: Servers, model_path: Path) -> Server:
    return module_servers.start("--model", str(model_path), "--contextsize", "1024")


def completion(srv: Server, path: str = "/v1/completions", **body: object) -> dict:
    r = httpx.post(f"{srv.url}{path}", json={"prompt": PROMPT, "max_tokens": 24, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def text(srv: Server, **body: object) -> str:
    return str(completion(srv, **body)["choices"][0]["text"])


def kobold_text(srv: Server, **body: object) -> str:
    r = httpx.post(f"{srv.url}/api/v1/generate", json={"prompt": PROMPT, "max_length": 24, **body}, timeout=60)
    assert r.status_code == 200, r.text
    return str(r.json()["results"][0]["text"])


def test_sillytavern_kobold_body_is_accepted_on_both_openai_routes(srv: Server) -> None:
    done = completion(srv, **SILLYTAVERN)
    assert done["choices"][0]["finish_reason"] in ("stop", "length") and done["usage"]["completion_tokens"] > 0
    chat = {k: v for k, v in SILLYTAVERN.items() if k != "prompt"}
    r = httpx.post(f"{srv.url}/v1/chat/completions", timeout=60,
                   json={**chat, "messages": [{"role": "user", "content": "Say hello."}]})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] > 0


def test_rep_pen_acts_on_v1_completions_as_on_the_kobold_route(srv: Server) -> None:
    greedy = text(srv, temperature=0)
    penalised = text(srv, temperature=0, rep_pen=3.0, rep_pen_range=-1)
    assert penalised != greedy
    assert penalised == kobold_text(srv, temperature=0, rep_pen=3.0, rep_pen_range=-1)
    assert greedy == kobold_text(srv, temperature=0)


def test_top_k_and_seed_act_on_v1_completions(srv: Server) -> None:
    greedy = text(srv, temperature=0)
    hot = text(srv, temperature=3.0, seed=7)
    assert hot != greedy  # temperature 3 without top_k wanders
    assert text(srv, temperature=3.0, top_k=1, seed=7) == greedy  # top_k 1 is greedy whatever the temperature
    assert text(srv, temperature=3.0, top_k=-1, sampler_seed=7) == hot  # -1 is "off", sampler_seed is the seed


def test_kobold_stop_sequence_and_mirostat_mode_on_v1_completions(srv: Server) -> None:
    greedy = text(srv, temperature=0)
    word = greedy.split()[2]
    stopped = completion(srv, temperature=0, stop_sequence=[word])["choices"][0]
    assert stopped["finish_reason"] == "stop" and word not in stopped["text"]
    assert text(srv, temperature=1.0, mirostat_mode=2, mirostat_tau=0.1, seed=3) == \
        kobold_text(srv, temperature=1.0, mirostat=2, mirostat_tau=0.1, sampler_seed=3)


BAD = [
    {"temperature": 101}, {"top_k": -2}, {"rep_pen": 0}, {"sampler_order": [6, 9]},
    {"dry_sequence_breakers": "[not json"}, {"xtc_probability": 1.5}, {"mirostat_mode": 3},
]


@pytest.mark.parametrize("bad", BAD, ids=[next(iter(b)) for b in BAD])
def test_bounds_are_the_same_in_every_dialect_in_its_own_shape(srv: Server, bad: dict) -> None:
    field = next(iter(bad))
    r = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "x", **bad}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
    assert field in r.json()["error"]["message"]
    r = httpx.post(f"{srv.url}/api/v1/generate", json={"prompt": "x", **bad}, timeout=30)
    assert r.status_code == 400 and r.json()["detail"]["type"] == "bad_input" and field in r.json()["detail"]["msg"]


@pytest.mark.parametrize(("option", "value"), [("temperature", 101), ("top_k", -2), ("repeat_penalty", 0),
                                               ("mirostat", 3)])
def test_ollama_options_have_the_same_bounds(srv: Server, option: str, value: float) -> None:
    r = httpx.post(f"{srv.url}/api/generate", timeout=30,
                   json={"model": "SmolLM2-135M-Instruct.Q4_1", "prompt": "x", "options": {option: value}})
    assert r.status_code == 400 and option in r.json()["error"]


def test_genlimit_caps_every_dialect(module_servers: Servers, model_path: Path) -> None:
    limited = module_servers.start("--model", str(model_path), "--contextsize", "1024", "--genlimit", "5")
    client = ollama.Client(host=limited.url)
    r = client.generate(model="SmolLM2-135M-Instruct.Q4_1", prompt=PROMPT, raw=True,
                        options={"num_predict": 40, "temperature": 0})
    assert r.eval_count == 5
    unbounded = client.generate(model="SmolLM2-135M-Instruct.Q4_1", prompt=PROMPT, raw=True,
                                options={"temperature": 0})  # num_predict -1: until the context is full
    assert unbounded.eval_count == 5
    assert completion(limited, max_tokens=40)["usage"]["completion_tokens"] == 5
    kobold = httpx.post(f"{limited.url}/api/v1/generate", json={"prompt": PROMPT, "max_length": 40}, timeout=60)
    assert kobold.json()["results"][0]["completion_tokens"] == 5
