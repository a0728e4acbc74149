"""Ollama requests -> ``GenerationParams``; model facts and results -> Ollama's response shapes.

- ``num_predict`` -1 (Ollama's default) and -2 mean "until the context is full", capped by ``--genlimit`` as in
  every dialect; ``num_ctx`` cannot
  reload a model per request here, so it caps the window of this request instead.
- ``format: "json"`` constrains the output to a JSON object; a JSON schema ``format`` to that schema.
- Names: Ollama's ``name:tag``; ``name:latest`` is the catalog entry ``name``.
- Durations in responses are nanoseconds, as in Ollama.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from pathlib import Path
from typing import Any

from warren.api.chat_format import ChatFormat, render
from warren.api.ollama.schemas import Base, ChatRequest, GenerateRequest
from warren.api.sampling import generation_amount, sampler_fields
from warren.errors import ConfigError, InvalidRequest
from warren.gguf.reader import GGUFInfo, SkippedArray
from warren.grammar import Constraints
from warren.model_info import ModelInfo
from warren.params import FinishReason, GenerationParams, GenerationResult
from warren.settings import ServerSettings
from warren.units import parse_duration

NS = 1_000_000_000
NEVER = "2318-11-22T00:00:00Z"  # what Ollama reports as expires_at for a model kept loaded for ever


def model_name(name: str) -> str:
    """``smol:latest`` -> ``smol``; other tags stay part of the name."""
    return name.removesuffix(":latest")


def tagged(name: str) -> str:
    return name if ":" in name else f"{name}:latest"


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def keep_alive_seconds(value: float | str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value, "keep_alive")
    except ConfigError as exc:  # its message names the value
        raise InvalidRequest(exc.message, param="keep_alive") from None


def format_schema(fmt: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """The JSON schema ``format`` asks for ("json": any object), or None."""
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {"type": "object"}
    if isinstance(fmt, dict):
        return fmt
    raise InvalidRequest(f'format {str(fmt)[:40]!r} is not supported: use "json" or a JSON schema', param="format")


def constraints(req: Base) -> Constraints:
    """The request's ``format`` schema, checked before a model is chosen (``warren.grammar``)."""
    return Constraints(json_schema=format_schema(req.format), schema_param="format")


def _schema_text(fmt: str | dict[str, Any] | None) -> str:
    schema = format_schema(fmt)
    return "" if schema is None else json.dumps(schema)


def _params(req: Base, prompt: str, n_ctx: int, server: ServerSettings, stops: tuple[str, ...] = ()
            ) -> GenerationParams:
    o = req.options
    window = min(o.num_ctx or n_ctx, n_ctx)
    wanted = o.num_predict if o.num_predict is not None and o.num_predict > 0 else window
    fields = sampler_fields(o.samplers(), window)
    return GenerationParams(
        prompt=prompt, max_tokens=generation_amount(wanted, server), **{**fields, "stop": fields["stop"] + stops},
        json_schema=_schema_text(req.format), context_limit=window, truncate_prompt=True,
    )


def generate_params(req: GenerateRequest, model_info: ModelInfo, n_ctx: int, server: ServerSettings,
                    fmt: ChatFormat, model: str) -> GenerationParams:
    if req.raw:
        return _params(req, req.prompt, n_ctx, server)
    messages = ([{"role": "system", "content": req.system}] if req.system else []) + \
        [{"role": "user", "content": req.prompt}]
    return _params(req, render(fmt, messages, model_info, model), n_ctx, server, fmt.stops)


def chat_params(req: ChatRequest, model_info: ModelInfo, n_ctx: int, server: ServerSettings, fmt: ChatFormat,
                model: str) -> GenerationParams:
    if any(m.images for m in req.messages):
        raise InvalidRequest("images are not supported: warren serves text models", param="messages")
    prompt = render(fmt, [m.model_dump(include={"role", "content"}) for m in req.messages], model_info, model)
    return _params(req, prompt, n_ctx, server, fmt.stops)


def done_reason(reason: FinishReason) -> str:
    return "length" if reason in (FinishReason.LENGTH, FinishReason.ABORT) else "stop"


def timings(r: GenerationResult, total_seconds: float, load_seconds: float) -> dict[str, int]:
    return {"total_duration": int(total_seconds * NS), "load_duration": int(load_seconds * NS),
            "prompt_eval_count": r.prompt_tokens, "prompt_eval_duration": int(r.prompt_seconds * NS),
            "eval_count": r.completion_tokens, "eval_duration": int(r.generation_seconds * NS)}


# -- model facts ----------------------------------------------------------------------------------------
def _size_label(info: GGUFInfo) -> str:
    label = info.metadata.get("general.size_label")
    if isinstance(label, str) and label:
        return label
    n = info.parameter_count
    return f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def details(info: GGUFInfo) -> dict[str, Any]:
    return {"parent_model": "", "format": "gguf", "family": info.architecture, "families": [info.architecture],
            "parameter_size": _size_label(info), "quantization_level": info.quantization}


def digest(path: Path) -> str:
    """A stable id for the file without hashing gigabytes: sha256 of its path, size and mtime."""
    st = path.stat()
    return hashlib.sha256(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()


def modified_at(path: Path) -> str:
    return datetime.datetime.fromtimestamp(path.stat().st_mtime, datetime.UTC).isoformat().replace("+00:00", "Z")


def model_info(info: GGUFInfo) -> dict[str, Any]:
    """GGUF metadata as Ollama's ``model_info``: scalars and short arrays (the vocabulary is left out)."""
    out: dict[str, Any] = {"general.parameter_count": info.parameter_count}
    for key, value in info.metadata.items():
        if not isinstance(value, SkippedArray) and key != "tokenizer.chat_template":
            out[key] = value
    return out
