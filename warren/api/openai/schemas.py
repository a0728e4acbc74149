"""OpenAI request bodies (``/v1/completions``, ``/v1/chat/completions``).

Both requests are the shared ``Samplers`` (``warren/api/sampling.py``) plus OpenAI's own fields, as
KoboldCpp's OpenAI routes take its whole field set: SillyTavern's KoboldCpp connection sends ``rep_pen``,
``dry_*``, ``sampler_order`` … to ``/v1/completions``. OpenAI's defaults stay OpenAI's (``temperature`` 1,
``top_p`` 1, no ``top_k``); the bounds are the shared ones. Unknown fields are ignored: OpenAI SDKs add
fields over time (``user``, ``service_tier``, ``store`` …) and a local server must not break when they do;
``docs/api-compat.md`` lists which fields are honoured.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from warren.api.sampling import (
    KOBOLD_LOGPROBS,
    GenAmount,
    Probability,
    Samplers,
    Seed,
    Temperature,
    TopK,
    TopLogprobs,
)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class Sampling(Samplers):
    model: str | None = Field(None, max_length=512)
    max_tokens: GenAmount | None = None
    temperature: Temperature = 1.0
    top_p: Probability = 1.0
    top_k: TopK = 0
    n: int = Field(1, ge=1, le=1)
    stop: str | list[str] | None = None
    seed: Seed | None = None
    logit_bias: dict[str, float] | None = Field(None, max_length=1024)
    stream: bool = False
    stream_options: StreamOptions | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 256:
            raise ValueError("at most 256 stop sequences")
        return value

    @field_validator("logit_bias", mode="before")
    @classmethod
    def _empty_bias(cls, value: Any) -> Any:
        return None if value == [] else value  # some clients send an empty list for "no biases"

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not key.isdigit():
                raise ValueError(f"logit_bias keys are token ids, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"logit_bias values are in [-100, 100], got {bias}")
        return value


class CompletionRequest(Sampling):
    prompt: str | list[str] = Field(..., description="A string, or a list holding exactly one string.")
    echo: bool = False
    logprobs: TopLogprobs | None = Field(None, description="OpenAI: the N most likely tokens at each step; "
                                                           "KoboldCpp's true: its 5")

    @field_validator("logprobs", mode="before")
    @classmethod
    def _kobold_logprobs(cls, value: Any) -> Any:
        if isinstance(value, bool):  # KoboldCpp's field on the same route
            return KOBOLD_LOGPROBS if value else None
        return value

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("warren serves one prompt per request; send a list of exactly one string")
        return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        """Text content; a list of parts keeps its ``text`` parts (images are not supported)."""
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        parts = []
        for part in self.content:
            if part.get("type") != "text":
                raise ValueError(f"content parts of type {part.get('type')!r} are not supported")
            parts.append(str(part.get("text", "")))
        return "".join(parts)


class ChatRequest(Sampling):
    messages: list[ChatMessage] = Field(..., min_length=1, max_length=4096)
    max_completion_tokens: GenAmount | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool = False
    top_logprobs: TopLogprobs | None = None


class EmbeddingsRequest(BaseModel):
    """``/v1/embeddings``: ``input`` is a string, a list of strings, a token array or a list of token arrays, as
    OpenAI's API takes. Unknown fields are ignored, as on the other routes."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, max_length=512)
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None
