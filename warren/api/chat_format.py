"""Which chat template a model's chats are rendered with, decided once per model file and shown to clients.

In order (KoboldCpp's ``--chatcompletionsadapter``, default ``AutoGuess``):

1. an adapter named on the command line (a built-in name, a KoboldCpp adapter file or JSON): always that;
2. the GGUF's own ``tokenizer.chat_template`` (Jinja), when it has one;
3. AutoGuess: the family its architecture and special tokens show (``warren/chat_adapters.py``);
4. ChatML, the last resort, named as such.

The choice is made from the GGUF header (never by loading the model), cached per version of the file, and
reported: in the log when first made, on every chat request's log line, in ``/api/show`` and ``/props``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from warren import chat_adapters
from warren.api.chat_template import render_chat
from warren.gguf.tokens import whole_tokens
from warren.model_info import ModelInfo
from warren.pool.pool import Pool

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ChatFormat:
    name: str  # what was chosen and why, e.g. "Gemma (AutoGuess: architecture gemma3)"
    template: str  # Jinja source, rendered by warren/api/chat_template.py
    stops: tuple[str, ...] = ()  # stop strings an adapter adds (the next turn's tags), as KoboldCpp


_cache: dict[tuple[object, str], ChatFormat] = {}


def chat_format(pool: Pool, model: str) -> ChatFormat:
    """The chat format of catalog entry ``model`` under the server's ``--chatcompletionsadapter``."""
    entry = pool.catalog.get(model)
    setting = pool.server.chat_adapter
    key = (entry.fingerprint, setting)
    cached = _cache.get(key)
    if cached is not None:
        return cached
    chosen = chat_adapters.load(setting)  # checked at start-up already: no error here
    if chosen is not None:
        fmt = ChatFormat(f"{chosen.name} (--chatcompletionsadapter)", chosen.template, chosen.stops)
    else:
        info = pool.catalog.gguf_info(entry)
        if info.chat_template:
            fmt = ChatFormat("the GGUF's chat template", info.chat_template)
        else:
            tokens = whole_tokens(info, chat_adapters.CANDIDATE_TOKENS)
            guessed = chat_adapters.guess(info.architecture, tokens)
            if guessed is not None:
                shown = ", ".join(sorted(tokens)) or "none"
                fmt = ChatFormat(f"{guessed.name} (AutoGuess: architecture {info.architecture}, special tokens "
                                 f"{shown})", guessed.template, guessed.stops)
            else:
                fallback = chat_adapters.CHATML
                fmt = ChatFormat(f"ChatML (AutoGuess recognised no family for architecture {info.architecture}; "
                                 "the last resort)", fallback.template, fallback.stops)
    log.info("chat template model=%s template=%s", model, fmt.name)
    _cache[key] = fmt
    return fmt


def render(fmt: ChatFormat, messages: list[dict[str, Any]], model_info: ModelInfo, model: str) -> str:
    """The chat as one prompt, in ``fmt``; the log line says which template rendered it."""
    log.info("chat rendered model=%s messages=%d template=%s", model, len(messages), fmt.name)
    return render_chat(fmt.template, messages, bos_token=model_info.bos_token, eos_token=model_info.eos_token)
