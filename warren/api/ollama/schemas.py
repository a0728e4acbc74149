"""Ollama request bodies (``/api/generate``, ``/api/chat``, ``/api/show``).

Unknown fields are ignored (clients send ``think``, ``tools``, ``images`` …); ``options`` keys that warren
does not implement are ignored too, and ``docs/api-compat.md`` lists which are honoured. The options
that are honoured are range-checked like the other dialects' sampling fields.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**32 - 1


class Options(BaseModel):
    model_config = ConfigDict(extra="ignore")

    num_predict: int | None = Field(None, ge=-2, le=262144)
    num_ctx: int | None = Field(None, ge=1, le=262144)
    temperature: float = Field(0.8, ge=0.0, le=100.0)
    top_k: int = Field(40, ge=0, le=1_000_000)
    top_p: float = Field(0.9, ge=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    typical_p: float = Field(1.0, ge=0.0, le=1.0)
    repeat_penalty: float = Field(1.1, gt=0.0, le=10.0)
    repeat_last_n: int = Field(64, ge=-1, le=262144)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    mirostat: int = Field(0, ge=0, le=2)
    mirostat_tau: float = Field(5.0, ge=0.0, le=100.0)
    mirostat_eta: float = Field(0.1, ge=0.0, le=10.0)
    seed: int | None = Field(None, ge=-1, le=MAX_SEED)
    stop: list[str] | str | None = None


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
