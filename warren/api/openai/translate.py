"""OpenAI requests -> ``GenerationParams``; results -> OpenAI response objects.

As KoboldCpp does: a missing or zero ``max_tokens`` means ``--defaultgenamt``; ``seed`` maps to the
sampler seed; KoboldCpp's own sampling fields are honoured here as on its native route (one mapping,
``warren/api/sampling.py``). Unlike KoboldCpp, a prompt that does not fit the context is refused
(``context_length_exceeded``) instead of silently losing its start, because OpenAI clients count on it.
``response_format: {"type": "json_object"}`` constrains the output with a JSON grammar, ``json_schema``
with the schema's; ``constraints`` reads both (and ``grammar``) before a model is chosen.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from typing import Any

from warren.api import logprobs
from warren.api.chat_format import ChatFormat, render
from warren.api.openai.schemas import ChatRequest, CompletionRequest, Sampling
from warren.api.sampling import generation_amount, sampler_fields
from warren.errors import InvalidRequest
from warren.grammar import Constraints
from warren.model_info import ModelInfo
from warren.params import FinishReason, GenerationParams, GenerationResult
from warren.settings import ServerSettings

JSON_OBJECT_SCHEMA: dict[str, Any] = {"type": "object"}  # response_format json_object: any JSON object


def response_schema(req: Sampling) -> dict[str, Any] | None:
    """The JSON schema ``response_format`` asks for (chat only), or None for plain text."""
    fmt = getattr(req, "response_format", None) or {}
    kind = fmt.get("type", "text")
    if kind == "json_object":
        return dict(JSON_OBJECT_SCHEMA)
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise InvalidRequest("response_format json_schema needs json_schema.schema, an object",
                                 param="response_format")
        return schema
    if kind != "text":
        raise InvalidRequest(f"response_format type {str(kind)[:40]!r} is not supported (use text, json_object "
                             "or json_schema)", param="response_format")
    return None


def constraints(req: Sampling) -> Constraints:
    return Constraints(grammar=req.grammar or "", json_schema=response_schema(req), grammar_param="grammar",
                       schema_param="response_format")


def _common(req: Sampling, server: ServerSettings, prompt: str, max_tokens: int | None, n_ctx: int,
            logprobs: bool, top_logprobs: int) -> GenerationParams:
    """OpenAI's fields over the shared samplers (``warren/api/sampling.py``): ``stop`` joins KoboldCpp's
    ``stop_sequence``, ``seed`` wins over ``sampler_seed``, ``max_tokens`` over ``max_length``."""
    fields = sampler_fields(req, n_ctx)
    own_stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
    return GenerationParams(
        prompt=prompt,
        max_tokens=generation_amount(max_tokens or req.max_length, server),
        **{**fields, "stop": own_stop + fields["stop"],
           "seed": req.seed if req.seed is not None else fields["seed"]},
        logit_bias={int(k): v for k, v in (req.logit_bias or {}).items()},
        logprobs=logprobs,
        top_logprobs=top_logprobs,
    )


def completion_params(req: CompletionRequest, server: ServerSettings, n_ctx: int) -> GenerationParams:
    prompt = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
    return _common(req, server, prompt, req.max_tokens, n_ctx, req.logprobs is not None, req.logprobs or 0)


def chat_params(req: ChatRequest, server: ServerSettings, model_info: ModelInfo, n_ctx: int, fmt: ChatFormat,
                model: str) -> GenerationParams:
    try:
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                    for m in req.messages]
    except ValueError as exc:
        raise InvalidRequest(str(exc), param="messages") from None
    prompt = render(fmt, messages, model_info, model)
    params = _common(req, server, prompt, req.max_completion_tokens or req.max_tokens, n_ctx, req.logprobs,
                     req.top_logprobs or 0)
    params = dataclasses.replace(params, stop=params.stop + fmt.stops)
    schema = response_schema(req)
    if schema is not None:
        params = dataclasses.replace(params, json_schema=json.dumps(schema))
    return params


def finish_reason(reason: FinishReason) -> str:
    return "length" if reason in (FinishReason.LENGTH, FinishReason.ABORT) else "stop"


def usage(r: GenerationResult) -> dict[str, Any]:
    """OpenAI's usage, with ``prompt_tokens_details.cached_tokens``: the prompt tokens found in the KV cache
    (a reused prefix, a state kept across a swap, a shifted context) rather than decoded."""
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": r.cached_tokens}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def completion_body(r: GenerationResult, model: str, echo_prompt: str = "") -> dict[str, Any]:
    return {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"text": echo_prompt + r.text, "index": 0,
                         "logprobs": logprobs.completion(r, len(echo_prompt)),
                         "finish_reason": finish_reason(r.finish_reason)}],
            "usage": usage(r)}


def chat_body(r: GenerationResult, model: str) -> dict[str, Any]:
    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": r.text},
                         "logprobs": logprobs.chat(r), "finish_reason": finish_reason(r.finish_reason)}],
            "usage": usage(r)}


def embedding_inputs(value: str | list[str] | list[int] | list[list[int]]) -> tuple[str | tuple[int, ...], ...]:
    """OpenAI's ``input``: one string, strings, one token array (a list of ints), or token arrays."""
    if isinstance(value, str):
        return (value,)
    if value and all(isinstance(v, int) for v in value):
        return (tuple(value),)  # type: ignore[arg-type]
    return tuple(v if isinstance(v, str) else tuple(v) for v in value)  # type: ignore[union-attr]
