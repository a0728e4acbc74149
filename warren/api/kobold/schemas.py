"""KoboldCpp request bodies.

The sampling fields (``temperature`` … ``dry_*``, ``xtc_*``, ``sampler_order``, ``banned_strings``) are the
shared ``Samplers`` (``warren/api/sampling.py``), the same definition the OpenAI and Ollama requests use.
Unknown fields are ignored on purpose: KoboldAI Lite and SillyTavern send fields of other backends, and
refusing them would break those clients; ``docs/api-compat.md`` lists each field as honoured or carried.
A value out of range is a 400 in KoboldCpp's error shape.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from warren.api.sampling import CONTEXT_MAX, Samplers


class GenerateRequest(Samplers):
    prompt: str = ""
    memory: str = ""
    max_context_length: int | None = Field(None, ge=1, le=CONTEXT_MAX)
    logit_bias: dict[str, float] = Field(default_factory=dict, max_length=512)
    logprobs: bool = False
    genkey: str = Field("", max_length=256)

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float]) -> dict[str, float]:
        for key in value:
            if not key.lstrip("-").isdigit() or int(key) < 0:
                raise ValueError(f"logit_bias keys are token ids, got {key!r}")
        return value


class GenKeyRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    genkey: str = Field("", max_length=256)


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(..., max_length=16 * 1024 * 1024)
    special: bool = True


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    ids: list[int] = Field(..., max_length=1_000_000)


class EmbeddingsRequest(BaseModel):
    """``/api/extra/embeddings``: KoboldCpp's own fields (``input``, ``truncate``) and OpenAI's ``encoding_format``,
    which its shared handler also reads. ``model`` is ignored: the route serves the embeddings model."""

    model_config = ConfigDict(extra="ignore")

    input: str | list[str]
    truncate: bool = True
    encoding_format: Literal["float", "base64"] = "float"
