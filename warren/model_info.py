"""``ModelInfo``: what a worker reports about the model it has loaded (its ``Ready`` frame).

The supervisor never opens a model itself (it never imports ``llama_cpp``), so everything the routes need
to know about a loaded model — its context size for KoboldCpp's ``max_context_length``, its chat template
and BOS/EOS strings for the dialects that render chats — comes from here, typed, instead of from a dict
read by key. It crosses the channel as a plain dict (``as_wire``/``from_wire``); keys an engine adds that
are not fields (fake engines' counters in tests) are kept in ``extra``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True, slots=True)
class ModelInfo:
    n_ctx: int  # the context the worker created, in tokens
    n_ctx_train: int = 0  # the context the model was trained with
    n_vocab: int = 0
    n_params: int = 0
    size: int = 0  # bytes of weights
    chat_template: str | None = None  # the GGUF's tokenizer.chat_template, if it has one
    bos_token: str = ""
    eos_token: str = ""
    add_bos: bool = False  # the tokenizer wants BOS prepended
    gpu_offload: bool = False  # the engine can offload layers to a GPU
    flash_attention: str = ""  # "on", "off", or "auto" (left to llama.cpp): what the context runs with
    extra: dict[str, Any] = field(default_factory=dict)  # what an engine reports beyond these

    def as_wire(self) -> dict[str, Any]:
        data = asdict(self)
        extra = data.pop("extra")
        return {**extra, **data}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ModelInfo:
        names = {f.name for f in fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in data.items() if k in names},
                   extra={k: v for k, v in data.items() if k not in names})
