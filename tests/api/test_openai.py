"""The OpenAI dialect, driven by the official ``openai`` Python client against a real server."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import Server

MODEL = "SmolLM2-135M-Instruct.Q4_1"


@pytest.fixture
def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]


def test_completion_and_usage(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.model == MODEL
    assert r.choices[0].finish_reason == "length" and len(r.choices[0].text) > 5
    assert r.usage is not None and r.usage.completion_tokens == 12 and r.usage.total_tokens == 12 + r.usage.prompt_tokens
    again = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=12, temperature=0)
    assert again.choices[0].text == r.choices[0].text


def test_completion_stream_and_stop(client: openai.OpenAI) -> None:
    full = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=12,
                                     temperature=0).choices[0].text
    chunks = list(client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=12,
                                            temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == full
    assert chunks[-1].choices[0].finish_reason == "length"
    word = full.split()[1]
    stopped = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=12,
                                        temperature=0, stop=[word])
    assert stopped.choices[0].finish_reason == "stop" and word not in stopped.choices[0].text


def test_chat_uses_the_gguf_template(client: openai.OpenAI, server: Server) -> None:
    messages = [{"role": "user", "content": "What is the capital of Germany?"}]
    r = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=40, temperature=0)
    answer = r.choices[0].message.content or ""
    assert r.choices[0].message.role == "assistant" and "Berlin" in answer
    assert r.choices[0].finish_reason == "stop"  # the template's <|im_end|> ended it
    # The same prompt, rendered by hand with SmolLM2's ChatML template, gives the same answer.
    prompt = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
              "<|im_start|>user\nWhat is the capital of Germany?<|im_end|>\n<|im_start|>assistant\n")
    raw = httpx.post(f"{server.url}/api/v1/generate", json={"prompt": prompt, "max_length": 40, "temperature": 0})
    assert raw.json()["results"][0]["text"] == answer


def test_chat_stream_seed_and_usage(client: openai.OpenAI) -> None:
    kw = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a story."}], max_tokens=16,
              temperature=0.9, top_p=0.9, seed=42)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 16
    assert text
    # Same seed, same text. (Compared between two runs that both reuse the cached prompt: llama.cpp's
    # logits differ in the last bits between a batched and a one-token decode of the same prompt.)
    again = client.chat.completions.create(**kw).choices[0].message.content
    assert client.chat.completions.create(**kw).choices[0].message.content == again


def test_json_object_response_format(client: openai.OpenAI) -> None:
    import json

    prompt = "Output a JSON object describing a cat with keys name and age."
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                       max_tokens=200, temperature=0, response_format={"type": "json_object"})
    # Greedy decoding is deterministic: for this prompt the model closes the object well within the budget.
    assert r.choices[0].finish_reason == "stop"
    assert set(json.loads(r.choices[0].message.content or "")) == {"name", "age"}


def test_errors_in_openai_shape(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model=MODEL, prompt="x", temperature=101)
    assert bad.value.body["type"] == "invalid_request_error" and bad.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[], max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="context window"):
        client.completions.create(model=MODEL, prompt="word " * 2100, max_tokens=1)


def test_one_model_answers_to_any_name(client: openai.OpenAI) -> None:
    """KoboldCpp-style, a server of one model serves it whatever the client names (apps hard-code names)."""
    named = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6, temperature=0)
    for name in ("gpt-3.5-turbo", "koboldcpp/anything"):
        r = client.completions.create(model=name, prompt="The capital of France is", max_tokens=6, temperature=0)
        assert r.model == MODEL and r.choices[0].text == named.choices[0].text
    chat = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=4)
    assert chat.model == MODEL and chat.usage is not None and chat.usage.completion_tokens > 0
    with pytest.raises(openai.APIStatusError, match="is gone") as gone:  # a handle still names one exact instance
        client.completions.create(model=f"{MODEL}@999", prompt="x", max_tokens=1)
    assert gone.value.status_code == 410


def test_malformed_json_and_unknown_route(server: Server) -> None:
    r = httpx.post(f"{server.url}/v1/chat/completions", content=b"{oops", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"] == "the request body is not valid JSON"
    r = httpx.get(f"{server.url}/v1/nothing")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
