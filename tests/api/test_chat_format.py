"""Chats with a GGUF that has no chat template: Gemma 3 270M gets Gemma's turns (KoboldCpp's AutoGuess), not
ChatML, and the server says which template it used (log, ``/api/show``, ``/props``).

The packaged Gemma 3 270M is the pre-trained model, not the instruction-tuned one (that is why it has no
template): it does not keep to turns under any template, so the tests check the prompt it gets, through the
answer the same prompt written by hand gives."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import Server, Servers


@pytest.fixture(scope="module")
def gemma(module_servers: Servers, gemma_path: Path) -> Server:
    return module_servers.start("--model", str(gemma_path), "--contextsize", "1024")


def test_gemma_chats_in_its_own_turns(gemma: Server) -> None:
    client = openai.OpenAI(base_url=f"{gemma.url}/v1", api_key="x", max_retries=0)
    r = client.chat.completions.create(model="gemma", messages=[{"role": "user", "content": "Name a colour."}],
                                       max_tokens=24, temperature=0)
    answer = r.choices[0].message.content or ""
    assert answer.strip() and "<|im_" not in answer  # ChatML had it answer "Name a colour.<|im_end|>\n<|im_start|>"
    # The same answer as the prompt written by hand in Gemma's turns (BOS added by the tokenizer).
    prompt = "<start_of_turn>user\nName a colour.<end_of_turn>\n<start_of_turn>model\n"
    raw = httpx.post(f"{gemma.url}/api/v1/generate", timeout=60,
                     json={"prompt": prompt, "max_length": 24, "temperature": 0})
    assert raw.json()["results"][0]["text"] == answer
    chatml = "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    blind = httpx.post(f"{gemma.url}/api/v1/generate", timeout=60,
                       json={"prompt": chatml, "max_length": 24, "temperature": 0})
    assert blind.json()["results"][0]["text"] != answer  # so the comparison above can tell the two apart
    assert "template=Gemma (AutoGuess: architecture gemma3" in gemma.log()


def test_the_template_used_is_shown(gemma: Server) -> None:
    show = httpx.post(f"{gemma.url}/api/show", json={"model": "anything"}, timeout=10).json()
    assert show["template_name"].startswith("Gemma (AutoGuess") and "<start_of_turn>model" in show["template"]
    props = httpx.get(f"{gemma.url}/props", timeout=10).json()
    assert props["chat_template"] == show["template"] and props["chat_template_name"] == show["template_name"]


def test_a_koboldcpp_adapter_file_wins(servers: Servers, model_path: Path, tmp_path: Path) -> None:
    adapter = tmp_path / "plain.json"
    adapter.write_text(json.dumps({"system_start": "", "system_end": "\n", "user_start": "Question: ",
                                   "user_end": "\n", "assistant_start": "Answer:", "assistant_end": "\n"}))
    srv = servers.start("--model", str(model_path), "--contextsize", "1024", "--chatcompletionsadapter", str(adapter))
    props = httpx.get(f"{srv.url}/props", timeout=10).json()
    assert props["chat_template_name"] == "plain.json (--chatcompletionsadapter)"
    chat = httpx.post(f"{srv.url}/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": "What is 2+2?"}], "max_tokens": 8, "temperature": 0})
    raw = httpx.post(f"{srv.url}/v1/completions", timeout=60, json={
        "prompt": "Question: What is 2+2?\nAnswer:", "max_tokens": 8, "temperature": 0, "stop": ["Question:"]})
    assert chat.json()["choices"][0]["message"]["content"] == raw.json()["choices"][0]["text"]


def test_autoguess_is_the_default_and_the_gguf_template_wins_there(server: Server) -> None:
    props = httpx.get(f"{server.url}/props", timeout=10).json()
    assert props["chat_template_name"] == "the GGUF's chat template" and "<|im_start|>" in props["chat_template"]
