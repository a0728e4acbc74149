"""KoboldCpp's chat adapters and AutoGuess (``warren/chat_adapters.py``), and the vocabulary look-up it uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from warren import chat_adapters as ca
from warren.api.chat_template import render_chat
from warren.errors import ConfigError
from warren.gguf.reader import read_gguf
from warren.gguf.tokens import whole_tokens

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Red."}, {"role": "user", "content": "Another?"}]


def test_gemma_is_recognised_from_its_file(gemma_path: Path) -> None:
    info = read_gguf(gemma_path)
    assert info.chat_template is None  # the case AutoGuess is for
    tokens = whole_tokens(info, ca.CANDIDATE_TOKENS)
    assert tokens == {"<start_of_turn>", "<end_of_turn>"}
    assert ca.guess(info.architecture, tokens) is ca.GEMMA
    assert ca.guess("unknown", tokens) is ca.GEMMA  # the special tokens alone are enough


def test_the_vocabulary_look_up_finds_whole_tokens_only(model_path: Path) -> None:
    tokens = whole_tokens(read_gguf(model_path), {"<|im_start|>", "<|im_end|>", "<start_of_turn>", "<|im_"})
    assert tokens == {"<|im_start|>", "<|im_end|>"}


def test_guess_by_tokens_and_no_guess() -> None:
    assert ca.guess("llama", frozenset({"<|start_header_id|>", "<|eot_id|>"})) is ca.LLAMA3
    assert ca.guess("llama", frozenset({"<|im_start|>", "<|im_end|>"})) is ca.CHATML
    assert ca.guess("llama", frozenset({"<|start_header_id|>"})) is None  # every token of a family must be there
    assert ca.guess("gpt2", frozenset()) is None


def test_an_adapter_renders_as_a_jinja_template() -> None:
    text = render_chat(ca.GEMMA.template, CHAT)
    assert text == ("<start_of_turn>user\nBe brief.<end_of_turn>\n<start_of_turn>user\nName a colour.<end_of_turn>\n"
                    "<start_of_turn>model\nRed.<end_of_turn>\n<start_of_turn>user\nAnother?<end_of_turn>\n"
                    "<start_of_turn>model\n")
    odd = ca.Adapter("odd", "{% S %}'\\", "", "<｜User｜>", "\n", "A: ", "\n", assistant_gen="A:")
    assert render_chat(odd.template, [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]) == \
        "{% S %}'\\s<｜User｜>u\nA:"
    assert ca.GEMMA.stops == ("<start_of_turn>user", "<start_of_turn>model")


def test_load_names_files_and_json(tmp_path: Path) -> None:
    assert ca.load("AutoGuess") is None and ca.load("") is None
    assert ca.load("Gemma-2") is ca.GEMMA and ca.load("Llama-3.json") is ca.LLAMA3
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"user_start": "### User: ", "assistant_start": "### Bot: ", "user_end": "\n"}))
    mine = ca.load(str(path))
    assert mine is not None and mine.name == "mine.json" and mine.system_start == ""
    assert render_chat(mine.template, [{"role": "user", "content": "hi"}]) == "### User: hi\n### Bot: "
    inline = ca.load('{"user_start": "U:", "assistant_start": "B:"}')
    assert inline is not None and inline.assistant_start == "B:"


@pytest.mark.parametrize(("value", "words"), [
    ("NoSuchAdapter", "neither a known adapter nor a file"),
    ("{not json", "not valid JSON"),
    ('{"user_start": 5}', "user_start must be a string"),
    ("[1]", "neither a known adapter nor a file"),
])
def test_bad_adapters_are_refused_by_name(value: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        ca.load(value)
