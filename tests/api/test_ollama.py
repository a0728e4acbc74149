"""The Ollama dialect, driven by the official ``ollama`` Python client (and the ``openai`` one) against a
real server whose catalog has two entries and whose memory budget holds one of them."""

from __future__ import annotations

import datetime
import json
import time

import httpx
import ollama
import openai
import pytest

from tests.conftest import Server, Servers


@pytest.fixture(scope="module")
def srv(module_servers: Servers) -> Server:
    return module_servers.start("--nomodel", "--memory-budget", "200M", "--no-warm-spare",
                                models={"alpha": 1024, "beta": 768})


@pytest.fixture
def client(srv: Server) -> ollama.Client:
    return ollama.Client(host=srv.url)


def loaded(client: ollama.Client) -> set[str]:
    return {m.model for m in client.ps().models}


def test_version_and_tags(client: ollama.Client, srv: Server) -> None:
    assert httpx.get(f"{srv.url}/api/version").json()["version"]
    models = {m.model: m for m in client.list().models}
    assert set(models) == {"alpha:latest", "beta:latest"}
    alpha = models["alpha:latest"]
    assert alpha.details is not None and alpha.details.format == "gguf" and alpha.details.family == "llama"
    assert alpha.details.parameter_size == "135M" and alpha.details.quantization_level == "Q4_1"
    assert alpha.size and alpha.size > 90_000_000 and alpha.digest


def test_show(client: ollama.Client) -> None:
    info = client.show("alpha")
    assert "<|im_start|>" in (info.template or "")
    assert info.details is not None and info.details.family == "llama"
    assert info.modelinfo is not None and info.modelinfo["general.architecture"] == "llama"
    assert "num_ctx 1024" in (info.parameters or "")
    with pytest.raises(ollama.ResponseError) as missing:
        client.show("nope")
    assert missing.value.status_code == 404 and "not found" in missing.value.error


def test_generate_with_timings(client: ollama.Client) -> None:
    r = client.generate(model="alpha", prompt="What is the capital of Germany?", stream=False,
                        options={"temperature": 0, "num_predict": 40})
    assert "Berlin" in r.response and r.done and r.done_reason == "stop"
    assert r.eval_count and r.prompt_eval_count and r.eval_count < 40
    assert r.total_duration and r.eval_duration and r.prompt_eval_duration is not None
    assert r.total_duration >= r.eval_duration > 0
    again = client.generate(model="alpha:latest", prompt="What is the capital of Germany?", stream=False,
                            options={"temperature": 0, "num_predict": 40})
    assert again.response == r.response


def test_generate_streams_ndjson_by_default(client: ollama.Client, srv: Server) -> None:
    parts = list(client.generate(model="alpha", prompt="Tell me a story.", stream=True,
                                 options={"temperature": 0, "num_predict": 12}))
    assert len(parts) >= 12 and all(not p.done for p in parts[:-1]) and parts[-1].done
    assert parts[-1].done_reason == "length" and parts[-1].eval_count == 12
    whole = client.generate(model="alpha", prompt="Tell me a story.", stream=False,
                            options={"temperature": 0, "num_predict": 12})
    assert "".join(p.response for p in parts) == whole.response
    # Without "stream" in the body the server streams, as Ollama does (the Python client always sends it).
    with httpx.stream("POST", f"{srv.url}/api/generate", json={"model": "alpha", "prompt": "Hi",
                                                               "options": {"num_predict": 2}}) as r:
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert len(lines) == 3 and lines[-1]["done"] is True


def test_chat_system_and_stop(client: ollama.Client) -> None:
    # Without Ollama's default repeat penalty (1.1 over the last 64 tokens, the prompt's included, as Ollama
    # and KoboldCpp do), which talks this small model out of its plain answer.
    r = client.chat(model="alpha", messages=[{"role": "user", "content": "What is 2+2?"}], stream=False,
                    options={"temperature": 0, "num_predict": 30, "repeat_penalty": 1.0})
    assert r.message.role == "assistant" and "4" in (r.message.content or "")
    chunks = list(client.chat(model="alpha", messages=[{"role": "system", "content": "You are terse."},
                                                       {"role": "user", "content": "Name a color."}],
                              stream=True, options={"temperature": 0, "num_predict": 20}))
    text = "".join(c.message.content or "" for c in chunks)
    assert text and chunks[-1].done
    first_word = text.split()[0]
    cut = client.chat(model="alpha", messages=[{"role": "system", "content": "You are terse."},
                                               {"role": "user", "content": "Name a color."}], stream=False,
                      options={"temperature": 0, "num_predict": 20, "stop": [first_word]})
    assert first_word not in (cut.message.content or "")


def test_tail_free_sampling_is_honoured(client: ollama.Client) -> None:
    def text(**options: float) -> str:
        return client.generate(model="alpha", prompt="Once upon a time", options={"num_predict": 24, **options}).response

    greedy = text(temperature=0)
    assert text(temperature=2.0, seed=7) != greedy  # hot sampling wanders off the greedy path...
    assert text(temperature=2.0, seed=7, tfs_z=0.0001) == greedy  # ...unless tail-free sampling keeps only the top


def test_json_format_and_schema(client: ollama.Client) -> None:
    r = client.generate(model="alpha", prompt="Describe a cat as JSON.", format="json", stream=False,
                        options={"temperature": 0, "num_predict": 200})
    assert r.done_reason == "stop"  # greedy: for this prompt the model closes the object well within the budget
    assert isinstance(json.loads(r.response), dict)
    schema = {"type": "object", "properties": {"answer": {"type": "boolean"}}, "required": ["answer"]}
    r = client.generate(model="alpha", prompt="Is the sky blue?", format=schema, stream=False,
                        options={"temperature": 0, "num_predict": 30})
    assert isinstance(json.loads(r.response)["answer"], bool)


def test_keep_alive_load_unload_and_ps(client: ollama.Client, srv: Server) -> None:
    # An empty prompt only loads. A client's -1 ("for ever") cannot outlast what the operator set: the
    # server's default keep-alive (300 s) stays in force.
    client.generate(model="beta", prompt="", keep_alive=-1)
    assert loaded(client) == {"beta:latest"}  # alpha was evicted: the budget holds one
    ps = client.ps().models[0]
    assert ps.size and ps.size > 50_000_000 and ps.expires_at is not None
    assert 250 < (ps.expires_at - datetime.datetime.now(datetime.UTC)).total_seconds() <= 300
    assert ps.context_length == 768
    beta = next(i for i in srv.pool()["instances"] if i["name"] == "beta")
    assert beta["state"] == "ready" and beta["keep_alive"] == 300
    client.generate(model="beta", prompt="Hi", keep_alive=0, options={"num_predict": 2})  # unload after it
    deadline = time.monotonic() + 10
    while loaded(client) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert loaded(client) == set()
    client.generate(model="alpha", prompt="", keep_alive="5m")
    ps = client.ps().models[0]
    assert ps.model == "alpha:latest" and ps.expires_at is not None
    client.generate(model="alpha", prompt="", keep_alive=0)  # an empty prompt with 0 unloads
    assert loaded(client) == set()


def test_errors_in_ollama_shape(client: ollama.Client, srv: Server) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        client.generate(model="nope", prompt="x")
    assert missing.value.status_code == 404 and "model 'nope' not found" in missing.value.error
    r = httpx.post(f"{srv.url}/api/generate", json={"model": "alpha", "prompt": "x",
                                                    "options": {"temperature": -1}})
    assert r.status_code == 400 and "temperature" in r.json()["error"]
    r = httpx.post(f"{srv.url}/api/chat", content=b"{bad json")
    assert r.status_code == 400 and r.json() == {"error": "the request body is not valid JSON"}


def test_per_model_prefix_for_ollama_clients(srv: Server) -> None:
    prefixed = ollama.Client(host=f"{srv.url}/m/beta")
    r = prefixed.generate(model="anything", prompt="Hi", stream=False, options={"num_predict": 3})
    assert r.eval_count == 3
    assert "beta" in {i["name"] for i in srv.pool()["instances"] if i["state"] == "ready"}


def test_openai_client_on_the_same_catalog(srv: Server) -> None:
    oai = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0)
    assert {m.id for m in oai.models.list().data} == {"alpha", "beta"}
    with pytest.raises(openai.NotFoundError, match="model 'gpt-3.5-turbo' not found; available: alpha, beta"):
        oai.completions.create(model="gpt-3.5-turbo", prompt="x", max_tokens=1)  # several models: names count
    for name in ("alpha", "beta", "alpha"):
        r = oai.chat.completions.create(model=name, messages=[{"role": "user", "content": "Hi!"}], max_tokens=8,
                                        temperature=0)
        assert r.model == name and r.choices[0].message.content
    chunks = list(oai.completions.create(model="beta", prompt="Once upon a time", max_tokens=5, stream=True))
    assert chunks[-1].choices[0].finish_reason == "length"
    # One model loaded; alpha stopped (or parked, when the budget has room for its parked size), once its
    # eviction has finished.
    deadline = time.monotonic() + 10
    while True:
        states = {i["name"]: i["state"] for i in srv.pool()["instances"]}
        if states["alpha"] in ("unloaded", "parked") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert states["beta"] == "ready" and states["alpha"] in ("unloaded", "parked"), states


def test_a_server_of_one_model_answers_to_any_name(server: Server) -> None:
    """KoboldCpp-style (one --model): whatever name an Ollama client sends, that model answers."""
    client = ollama.Client(host=server.url)
    r = client.generate(model="llama3.2", prompt="Hi", stream=False, options={"num_predict": 3})
    assert r.eval_count == 3
    assert client.show("llama3.2").details.family == "llama"  # the one model's own facts
