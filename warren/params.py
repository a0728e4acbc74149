"""``GenerationParams``: the one internal request shape every dialect translates into.

KoboldCpp, OpenAI and Ollama requests each have a ``translate.py`` that turns their fields into this
value; the worker reads nothing else. Range checks happen at the edge (the dialect's pydantic
schema gives the client a 4xx); by the time a value is here it is valid, so the worker trusts it.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

from warren.bounds import STOP_MAX_CHARS, STOP_MAX_COUNT, TOKEN_ID_LIMIT
from warren.errors import InvalidRequest


class FinishReason(enum.StrEnum):
    STOP = "stop"  # end-of-sequence token
    STOP_SEQUENCE = "stop_sequence"  # one of the request's stop strings
    LENGTH = "length"  # max tokens or context full
    ABORT = "abort"  # cancelled (KoboldCpp abort, client gone)


@dataclass(frozen=True, slots=True)
class GenerationParams:
    prompt: str
    max_tokens: int = 768
    temperature: float = 0.75
    top_k: int = 100
    top_p: float = 0.92
    min_p: float = 0.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 320
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    seed: int = -1  # -1: a random seed, reported back in Done.seed
    stop: tuple[str, ...] = ()
    trim_stop: bool = True  # cut the stop string from the text (KoboldCpp's trim_stop)
    ban_eos: bool = False
    grammar: str = ""  # GBNF
    json_schema: str = ""  # a JSON schema the output must follow (turned into GBNF in the worker)
    banned_strings: tuple[str, ...] = ()
    logit_bias: dict[int, float] = field(default_factory=dict)
    token_bans: tuple[int, ...] = ()  # token ids never sampled (KoboldCpp's custom_token_bans)
    bypass_eos: bool = False  # an end-of-generation token may be sampled but does not end the generation
    render_special: bool = False  # special tokens' text (<|im_end|> …) appears in the output
    add_bos: bool = True  # prepend BOS when the model's tokenizer asks for it
    context_limit: int = 0  # 0: the model's context; KoboldCpp's max_context_length can lower it
    truncate_prompt: bool = False  # KoboldCpp drops the oldest prompt tokens; OpenAI refuses instead
    # KoboldCpp's other samplers, carried from every dialect (warren/api/sampling.py); each default is "off"
    top_a: float = 0.0
    tfs: float = 1.0
    nsigma: float = 0.0  # top-n-sigma
    rep_pen_slope: float = 1.0
    dynatemp_range: float = 0.0  # dynamic temperature: temperature ± range
    dynatemp_exponent: float = 1.0
    smoothing_factor: float = 0.0  # quadratic sampling
    smoothing_curve: float = 1.0
    dry_multiplier: float = 0.0  # DRY ("don't repeat yourself")
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = 320
    dry_sequence_breakers: tuple[str, ...] = ()
    xtc_threshold: float = 0.2  # XTC ("exclude top choices")
    xtc_probability: float = 0.0
    sampler_order: tuple[int, ...] = ()  # KoboldCpp's ids; empty: the engine's own order
    logprobs: bool = False  # report the chosen token's log-probability at each step
    top_logprobs: int = 0  # and this many most likely alternatives
    keep_text: str = ""  # the prompt starts with it (KoboldCpp's memory): a truncation keeps it, cutting after

    def check(self) -> None:
        """The bounds every dialect shares (``warren/bounds.py``, with their reasons); ``InvalidRequest`` (a
        400 in the dialect's shape) names the field."""
        if len(self.stop) > STOP_MAX_COUNT:
            raise InvalidRequest(f"{len(self.stop)} stop strings: at most {STOP_MAX_COUNT}", param="stop")
        total = sum(len(s) for s in self.stop)
        if total > STOP_MAX_CHARS:
            raise InvalidRequest(f"the stop strings hold {total} characters together: at most {STOP_MAX_CHARS}",
                                 param="stop")
        bad = next((t for t in self.logit_bias if not 0 <= t < TOKEN_ID_LIMIT), None)
        if bad is not None:
            raise InvalidRequest(f"logit_bias key {bad} is not a token id", param="logit_bias")
        bad = next((t for t in self.token_bans if not 0 <= t < TOKEN_ID_LIMIT), None)
        if bad is not None:
            raise InvalidRequest(f"custom_token_bans holds {bad}, which is not a token id", param="custom_token_bans")

    def as_wire(self) -> dict[str, Any]:
        data = asdict(self)
        for name in _TUPLES:
            data[name] = list(data[name])
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> GenerationParams:
        return cls(**{
            **data,
            **{name: tuple(data[name]) for name in _TUPLES if name in data},
            "logit_bias": {int(k): float(v) for k, v in (data.get("logit_bias") or {}).items()},
        })


_TUPLES = ("stop", "banned_strings", "dry_sequence_breakers", "sampler_order", "token_bans")  # lists on the wire


@dataclass(frozen=True, slots=True)
class GenerationResult:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    prompt_seconds: float
    generation_seconds: float
    seed: int
    cached_tokens: int = 0  # prompt tokens found in the cache (reused prefix, restored or shifted), not decoded
    logprobs: tuple[TokenLogprob, ...] = ()  # one per generated token when the request asked (``logprobs``)


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One generated token's log-probability (log-softmax of the raw logits of its step, before any sampler, as
    OpenAI reports it) and the most likely tokens of that step, best first: ``(text, bytes, logprob)``."""

    token: str
    raw: bytes  # the token's bytes (a piece may be part of a UTF-8 character: OpenAI's ``bytes``)
    logprob: float
    top: tuple[tuple[str, bytes, float], ...] = ()

    def as_wire(self) -> list[Any]:
        return [self.token, self.raw, self.logprob, [list(t) for t in self.top]]

    @classmethod
    def from_wire(cls, data: list[Any]) -> TokenLogprob:
        token, raw, logprob, top = data
        return cls(token, bytes(raw), float(logprob), tuple((t, bytes(b), float(lp)) for t, b, lp in top))
