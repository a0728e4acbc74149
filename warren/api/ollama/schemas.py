"""Ollama request bodies (``/api/generate``, ``/api/chat``, ``/api/show``).

Unknown fields are ignored (clients send ``think``, ``tools``, ``images`` …); ``options`` keys that warren
does not implement are ignored too, and ``docs/api-compat.md`` lists which are honoured. The options keep
Ollama's names and defaults, with the shared bounds (``warren/api/sampling.py``): ``repeat_penalty`` is
bounded as KoboldCpp's ``rep_pen``, and ``Options.samplers`` turns them into the shared ``Samplers``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from warren.api.sampling import (
    CONTEXT_MAX,
    Mirostat,
    MirostatEta,
    MirostatTau,
    Penalty,
    PenaltyRange,
    PresencePenalty,
    Probability,
    Samplers,
    Seed,
    StopList,
    Temperature,
    TopK,
)


class Options(BaseModel):
    model_config = ConfigDict(extra="ignore")

    num_predict: int | None = Field(None, ge=-2, le=CONTEXT_MAX)
    num_ctx: int | None = Field(None, ge=1, le=CONTEXT_MAX)
    temperature: Temperature = 0.8
    top_k: TopK = 40
    top_p: Probability = 0.9
    min_p: Probability = 0.0
    typical_p: Probability = 1.0
    tfs_z: Probability = 1.0  # tail-free sampling (older Ollama versions): KoboldCpp's tfs
    repeat_penalty: Penalty = 1.1
    repeat_last_n: PenaltyRange = 64
    presence_penalty: PresencePenalty = 0.0
    frequency_penalty: PresencePenalty = 0.0
    mirostat: Mirostat = 0
    mirostat_tau: MirostatTau = 5.0
    mirostat_eta: MirostatEta = 0.1
    seed: Seed | None = None
    stop: StopList | str | None = None

    def samplers(self) -> Samplers:
        """The same options under the shared (KoboldCpp's) names, for the one mapping every dialect uses."""
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return Samplers(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, min_p=self.min_p,
                        typical=self.typical_p, tfs=self.tfs_z, rep_pen=self.repeat_penalty, rep_pen_range=self.repeat_last_n,
                        presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty,
                        mirostat=self.mirostat, mirostat_tau=self.mirostat_tau, mirostat_eta=self.mirostat_eta,
                        sampler_seed=self.seed if self.seed is not None and self.seed >= 0 else -1,
                        stop_sequence=stop)


class Base(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(..., min_length=1, max_length=512)
    stream: bool = True
    format: str | dict[str, Any] | None = None
    options: Options = Field(default_factory=Options)
    keep_alive: float | str | None = None


class GenerateRequest(Base):
    prompt: str = ""
    system: str | None = None
    raw: bool = False
    suffix: str | None = None


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: str = Field(..., pattern="^(system|user|assistant|tool)$")
    content: str = ""
    images: list[str] | None = None


class ChatRequest(Base):
    messages: list[Message] = Field(default_factory=list, max_length=4096)


class ShowRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = Field(None, max_length=512)
    name: str | None = Field(None, max_length=512)  # older clients send "name"


class EmbedRequest(BaseModel):
    """``/api/embed``: ``input`` a string or strings; ``truncate`` (default true) cuts an input longer than the
    context to fit, false makes it a 400. ``options`` are accepted and unused (no sampling here)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(..., min_length=1, max_length=512)
    input: str | list[str] = ""
    truncate: bool = True
    dimensions: int | None = Field(None, ge=1)
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None


class EmbeddingsRequest(BaseModel):
    """``/api/embeddings`` (Ollama's older route): one ``prompt``, one vector, not normalised."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(..., min_length=1, max_length=512)
    prompt: str = ""
    options: dict[str, Any] | None = None
    keep_alive: float | str | None = None
