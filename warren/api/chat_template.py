"""Render chat messages with a Jinja chat template (which one: ``warren/api/chat_format.py``).

Templates are Jinja written for Hugging Face's ``apply_chat_template``; they run in a sandbox (a
template is data from a model file, not trusted code) with the same helpers HF provides
(``raise_exception``, ``strftime_now``) and the model's BOS/EOS strings, which the worker reports in
its ``Ready`` frame. Without a template (``None``) ChatML is used; ``chat_format`` only gets there when
nothing better is known.
"""

from __future__ import annotations

import datetime
import functools
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from warren.errors import InvalidRequest

CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
          "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def _raise(message: str) -> None:
    raise InvalidRequest(f"the model's chat template refused the messages: {message}")


@functools.lru_cache(maxsize=16)
def _compile(source: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
    return env.from_string(source)


def render_chat(template: str | None, messages: list[dict[str, Any]], *, bos_token: str = "",
                eos_token: str = "", add_generation_prompt: bool = True) -> str:
    try:
        return _compile(template or CHATML).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                                   bos_token=bos_token, eos_token=eos_token)
    except jinja2.TemplateError as exc:
        raise InvalidRequest(f"the model's chat template failed: {exc}") from None
