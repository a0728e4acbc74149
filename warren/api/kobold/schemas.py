"""KoboldCpp request bodies.

Unknown fields are ignored on purpose: KoboldAI Lite and SillyTavern send many sampler fields
(``top_a``, ``dry_*``, ``xtc_*``, ``sampler_order`` …) that warren does not implement; refusing them
would break those clients. ``docs/api-compat.md`` lists each one as honoured or ignored. Fields warren
does honour are range-checked, and a bad value is a 400 in KoboldCpp's error shape.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_SEED = 2**32 - 1


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = ""
    memory: str = ""
    max_length: int | None = Field(None, ge=1, le=262144)
    max_context_length: int | None = Field(None, ge=1, le=262144)
    temperature: float = Field(0.75, ge=0.0, le=100.0)
    top_p: float = Field(0.92, ge=0.0, le=1.0)
    top_k: int = Field(100, ge=0, le=1_000_000)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    typical: float = Field(1.0, ge=0.0, le=1.0)
    rep_pen: float = Field(1.0, gt=0.0, le=10.0)
    repeat_penalty: float | None = Field(None, gt=0.0, le=10.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    rep_pen_range: int = Field(320, ge=-1, le=262144)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    mirostat: int = Field(0, ge=0, le=2)
    mirostat_tau: float = Field(5.0, ge=0.0, le=100.0)
    mirostat_eta: float = Field(0.1, ge=0.0, le=10.0)
    sampler_seed: int = Field(-1, ge=-1, le=MAX_SEED)
    stop_sequence: list[str] = Field(default_factory=list, max_length=256)
    trim_stop: bool = True
    ban_eos_token: bool = False
    use_default_badwordsids: bool = False
    grammar: str = Field("", max_length=1_000_000)
    banned_tokens: list[str] = Field(default_factory=list, max_length=768)
    banned_strings: list[str] = Field(default_factory=list, max_length=768)
    logit_bias: dict[str, float] = Field(default_factory=dict, max_length=512)
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
