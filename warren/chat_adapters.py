"""KoboldCpp's chat-completions adapters: the turn tags of a model family, and AutoGuess, which picks them.

A GGUF without ``tokenizer.chat_template`` (Gemma 3 270M's is one) must not get ChatML blindly: Gemma
then answers ``"Name a colour.<|im_end|>\\n<|im_start|>"``. KoboldCpp's ``--chatcompletionsadapter`` names a
set of tags (``system_start`` … ``assistant_end``), or ``AutoGuess`` (its default) to recognise the family.
Here AutoGuess recognises it from what the file says: its architecture (``general.architecture``) and the
special tokens in its vocabulary (``<start_of_turn>`` is Gemma's, ``<|start_header_id|>`` Llama 3's …).

An adapter becomes a Jinja template (``Adapter.template``), so every chat is rendered one way
(``warren/api/chat_template.py``) and ``/props`` can show the template used. A KoboldCpp adapter file
(JSON with those keys) is accepted as ``--chatcompletionsadapter FILE``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from warren.errors import ConfigError

AUTOGUESS = "AutoGuess"
TAGS = ("system_start", "system_end", "user_start", "user_end", "assistant_start", "assistant_end")
MAX_ADAPTER_BYTES = 1 * 2**20


def _literal(text: str) -> str:
    """``text`` as a Jinja string expression (Jinja decodes Python escapes in its literals)."""
    return "{{ '" + text.encode("unicode_escape").decode("ascii").replace("'", "\\'") + "' }}"


@dataclass(frozen=True, slots=True)
class Adapter:
    name: str
    system_start: str
    system_end: str
    user_start: str
    user_end: str
    assistant_start: str
    assistant_end: str
    assistant_gen: str = ""  # what opens the reply to generate, when it differs from assistant_start

    @property
    def template(self) -> str:
        """The same rendering as a Jinja chat template (``messages``, ``add_generation_prompt``)."""
        def turn(start: str, end: str) -> str:
            return _literal(start) + "{{ message['content'] }}" + _literal(end)
        return ("{% for message in messages %}"
                "{% if message['role'] == 'system' %}" + turn(self.system_start, self.system_end) +
                "{% elif message['role'] == 'assistant' %}" + turn(self.assistant_start, self.assistant_end) +
                "{% else %}" + turn(self.user_start, self.user_end) + "{% endif %}{% endfor %}"
                "{% if add_generation_prompt %}" + _literal(self.assistant_gen or self.assistant_start) +
                "{% endif %}")

    @property
    def stops(self) -> tuple[str, ...]:
        """KoboldCpp stops a chat reply where the model starts the next turn: its user and assistant tags."""
        return tuple(dict.fromkeys(t.strip() for t in (self.user_start, self.assistant_start) if t.strip()))


GEMMA = Adapter("Gemma", "<start_of_turn>user\n", "<end_of_turn>\n", "<start_of_turn>user\n", "<end_of_turn>\n",
                "<start_of_turn>model\n", "<end_of_turn>\n")
LLAMA3 = Adapter("Llama 3", "<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>",
                 "<|start_header_id|>user<|end_header_id|>\n\n", "<|eot_id|>",
                 "<|start_header_id|>assistant<|end_header_id|>\n\n", "<|eot_id|>")
CHATML = Adapter("ChatML", "<|im_start|>system\n", "<|im_end|>\n", "<|im_start|>user\n", "<|im_end|>\n",
                 "<|im_start|>assistant\n", "<|im_end|>\n")
PHI3 = Adapter("Phi 3", "<|system|>\n", "<|end|>\n", "<|user|>\n", "<|end|>\n", "<|assistant|>\n", "<|end|>\n")
MISTRAL = Adapter("Mistral", "[INST] ", "[/INST]", "[INST] ", "", "[/INST] ", "</s>", assistant_gen="[/INST]")
COMMAND_R = Adapter("Command-R", "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>", "<|END_OF_TURN_TOKEN|>",
                    "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>", "<|END_OF_TURN_TOKEN|>",
                    "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>", "<|END_OF_TURN_TOKEN|>")
DEEPSEEK = Adapter("DeepSeek", "", "", "<｜User｜>", "", "<｜Assistant｜>", "<｜end▁of▁sentence｜>")
ALPACA = Adapter("Alpaca", "", "\n\n", "### Instruction:\n", "\n\n", "### Response:\n", "\n\n")

BUILT_IN: dict[str, Adapter] = {a.name.lower().replace(" ", "-"): a for a in
                                (GEMMA, LLAMA3, CHATML, PHI3, MISTRAL, COMMAND_R, DEEPSEEK, ALPACA)}
# KoboldCpp's kcpp_adapters/ file names for the same families
BUILT_IN.update({"gemma-2": GEMMA, "gemma-3": GEMMA, "llama-3": LLAMA3, "phi-3": PHI3, "mistral-v2-v3": MISTRAL,
                 "mistral-v1": MISTRAL, "mistral-v3-tekken": MISTRAL})


@dataclass(frozen=True, slots=True)
class Family:
    """One family AutoGuess recognises: the architectures that are it, or the special tokens that show it."""

    adapter: Adapter
    architectures: frozenset[str]
    tokens: frozenset[str]  # all of these are whole tokens of the vocabulary

    def matches(self, architecture: str, has: Callable[[frozenset[str]], bool]) -> bool:
        return architecture in self.architectures or (bool(self.tokens) and has(self.tokens))


FAMILIES: tuple[Family, ...] = (
    Family(GEMMA, frozenset({"gemma", "gemma2", "gemma3", "gemma3n"}), frozenset({"<start_of_turn>",
                                                                                   "<end_of_turn>"})),
    Family(LLAMA3, frozenset(), frozenset({"<|start_header_id|>", "<|eot_id|>"})),
    Family(COMMAND_R, frozenset({"command-r", "cohere2"}), frozenset({"<|START_OF_TURN_TOKEN|>"})),
    Family(DEEPSEEK, frozenset(), frozenset({"<｜User｜>", "<｜Assistant｜>"})),
    Family(PHI3, frozenset({"phi3"}), frozenset({"<|user|>", "<|assistant|>", "<|end|>"})),
    Family(CHATML, frozenset(), frozenset({"<|im_start|>", "<|im_end|>"})),
    Family(MISTRAL, frozenset(), frozenset({"[INST]", "[/INST]"})),
)
CANDIDATE_TOKENS = frozenset().union(*(f.tokens for f in FAMILIES))


def guess(architecture: str, tokens: frozenset[str]) -> Adapter | None:
    """AutoGuess for a GGUF without a chat template: the first family its architecture or tokens show."""
    for family in FAMILIES:
        if family.matches(architecture, lambda wanted: wanted <= tokens):
            return family.adapter
    return None


def from_json(data: Any, name: str) -> Adapter:
    """A KoboldCpp adapter (``{"system_start": …, "assistant_end": …}``); missing tags are empty, as KoboldCpp."""
    if not isinstance(data, dict):
        raise ConfigError(f"--chatcompletionsadapter {name}: an adapter is a JSON object of turn tags",
                          hint=f"keys: {', '.join(TAGS)}")
    values = {key: data.get(key, "") for key in (*TAGS, "assistant_gen")}
    bad = [k for k, v in values.items() if not isinstance(v, str)]
    if bad:
        raise ConfigError(f"--chatcompletionsadapter {name}: {bad[0]} must be a string")
    return Adapter(name, **values)


def load(setting: str) -> Adapter | None:
    """``--chatcompletionsadapter``: None for AutoGuess, a built-in name, a JSON file, or a JSON literal."""
    if not setting or setting == AUTOGUESS:
        return None
    key = setting.lower().removesuffix(".json").replace(" ", "-")
    if key in BUILT_IN:
        return BUILT_IN[key]
    if setting.lstrip().startswith("{"):
        try:
            return from_json(json.loads(setting), "(inline)")
        except ValueError as exc:
            raise ConfigError(f"--chatcompletionsadapter: not valid JSON ({exc})") from None
    path = Path(setting)
    if not path.is_file():
        raise ConfigError(f"--chatcompletionsadapter {setting}: neither a known adapter nor a file",
                          hint=f"use {AUTOGUESS}, one of {', '.join(sorted(BUILT_IN))}, or a KoboldCpp adapter .json")
    if path.stat().st_size > MAX_ADAPTER_BYTES:
        raise ConfigError(f"--chatcompletionsadapter {setting}: the file is too large for an adapter")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"--chatcompletionsadapter {setting}: not a JSON adapter ({exc})") from None
    return from_json(data, path.name)
