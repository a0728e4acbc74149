"""The sampling fields, defined once for every dialect, and the one mapping onto ``GenerationParams``.

KoboldCpp accepts its whole field set on its OpenAI routes too (``/v1/completions``, ``/v1/chat/completions``):
SillyTavern's "Text Completion → KoboldCpp" connection posts ``rep_pen``, ``dry_*``, ``xtc_*``,
``sampler_order``, ``top_k: -1``, ``temperature`` up to 5 … to ``/v1/completions``. So the fields live here,
not in one dialect:

- **Bounds** are the ``Annotated`` types below; every dialect's schema uses them for its own names
  (Ollama's ``options.repeat_penalty`` is a ``Penalty``, as KoboldCpp's ``rep_pen``). A value out of range is
  a 400 in the route's dialect (``warren/api/errors.py``).
- **Fields and defaults** are ``Samplers``, KoboldCpp's names and defaults (its ``generate()``). KoboldCpp's
  request and both OpenAI requests inherit it; a dialect may give its own default to a field that dialect
  documents (OpenAI's ``temperature`` is 1), never other bounds. Ollama's options, under Ollama's names, are
  turned into a ``Samplers`` and take the same road.
- **The mapping** is ``sampler_fields``: every dialect's ``GenerationParams`` gets its sampling fields from it,
  so a sampler honoured on one route is honoured on all. The worker builds its chain from them
  (``warren/worker/samplers.py``); ``docs/api-compat.md`` says which it applies and what each costs.
- **Length**: ``generation_amount`` is the one place ``--defaultgenamt`` and ``--genlimit`` apply.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from warren.settings import ServerSettings

MAX_SEED = 2**32 - 1
CONTEXT_MAX = 262_144  # KoboldCpp's largest --contextsize
KOBOLD_LOGPROBS = 5  # KoboldCpp's logprobs: true returns the 5 most likely tokens at each step

# -- bounds, one per kind of value ---------------------------------------------------------------------
Temperature = Annotated[float, Field(ge=0.0, le=100.0, description="0: greedy")]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
TopK = Annotated[int, Field(ge=-1, le=1_000_000, description="0 or -1: off (SillyTavern sends -1); 1: greedy")]
Penalty = Annotated[float, Field(gt=0.0, le=10.0, description="repetition penalty; 1: off")]
PenaltyRange = Annotated[int, Field(ge=-1, le=CONTEXT_MAX, description="tokens looked back; -1: the context")]
PresencePenalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Mirostat = Annotated[int, Field(ge=0, le=2, description="0 off, 1 Mirostat, 2 Mirostat 2.0")]
MirostatTau = Annotated[float, Field(ge=0.0, le=100.0)]
MirostatEta = Annotated[float, Field(ge=0.0, le=10.0)]
Factor = Annotated[float, Field(ge=0.0, le=100.0)]  # multipliers, exponents, ranges: 0 or 1 is off
DryLength = Annotated[int, Field(ge=0, le=CONTEXT_MAX)]
Seed = Annotated[int, Field(ge=-1, le=MAX_SEED, description="-1: random")]
GenAmount = Annotated[int, Field(ge=0, le=CONTEXT_MAX, description="0: --defaultgenamt")]
TopLogprobs = Annotated[int, Field(ge=0, le=20)]
StopList = Annotated[list[str], Field(max_length=256)]
BannedList = Annotated[list[str], Field(max_length=768)]
Grammar = Annotated[str, Field(max_length=1_000_000)]

SAMPLER_IDS = range(7)  # KoboldCpp's sampler_order ids: 0 top_k, 1 top_a, 2 top_p, 3 tfs, 4 typical, 5 temp, 6 rep_pen


class Samplers(BaseModel):
    """KoboldCpp's sampling fields with its defaults. Unknown fields are ignored on purpose: clients send
    fields of other backends (and newer KoboldCpp fields) with every request; refusing them would break them."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    temperature: Temperature = 0.75
    top_p: Probability = 0.92
    top_k: TopK = 100
    min_p: Probability = 0.0
    top_a: Probability = 0.0
    typical: Probability = 1.0
    tfs: Probability = 1.0
    nsigma: Factor = 0.0
    rep_pen: Penalty = 1.0
    repeat_penalty: Penalty | None = None
    repetition_penalty: Penalty | None = None
    rep_pen_range: PenaltyRange = 320
    rep_pen_slope: Factor = 1.0
    presence_penalty: PresencePenalty = 0.0
    frequency_penalty: PresencePenalty = 0.0
    mirostat: Mirostat = Field(0, validation_alias=AliasChoices("mirostat", "mirostat_mode"))
    mirostat_tau: MirostatTau = 5.0
    mirostat_eta: MirostatEta = 0.1
    dynatemp_range: Factor = 0.0
    dynatemp_exponent: Factor = 1.0
    smoothing_factor: Factor = 0.0
    smoothing_curve: Factor = 1.0
    dry_multiplier: Factor = 0.0
    dry_base: Factor = 1.75
    dry_allowed_length: DryLength = 2
    dry_penalty_last_n: PenaltyRange = 320
    dry_sequence_breakers: list[str] = Field(default_factory=list, max_length=128)
    xtc_threshold: Probability = 0.2
    xtc_probability: Probability = 0.0
    sampler_order: list[int] | None = Field(None, min_length=1, max_length=7)
    sampler_seed: Seed = -1
    max_length: GenAmount | None = None
    stop_sequence: StopList = Field(default_factory=list)
    trim_stop: bool = True
    ban_eos_token: bool = False
    use_default_badwordsids: bool = False
    banned_tokens: BannedList = Field(default_factory=list)
    banned_strings: BannedList = Field(default_factory=list)
    grammar: Grammar = ""
    custom_token_bans: list[int] = Field(default_factory=list, max_length=4096)
    bypass_eos: bool = False
    render_special: bool = False

    @field_validator("custom_token_bans", mode="before")
    @classmethod
    def _banned_ids(cls, value: Any) -> Any:
        """KoboldCpp's form, comma-separated ids in a string ("" for none), or a list of ids."""
        if value is None:
            return []
        if isinstance(value, str):
            try:
                return [int(part) for part in value.split(",") if part.strip()]
            except ValueError:
                raise ValueError("custom_token_bans is a comma-separated list of token ids, such as \"13,2\"") \
                    from None
        return value

    @field_validator("dry_sequence_breakers", mode="before")
    @classmethod
    def _breakers(cls, value: Any) -> Any:
        """A list, or the same list JSON-encoded in a string (SillyTavern sends it so)."""
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else []
            except ValueError:
                raise ValueError("dry_sequence_breakers must be a list of strings or a JSON-encoded one") from None
        return value

    @field_validator("sampler_order")
    @classmethod
    def _order(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and any(i not in SAMPLER_IDS for i in value):
            raise ValueError("sampler_order ids are 0 top_k, 1 top_a, 2 top_p, 3 tfs, 4 typical, 5 temperature, "
                             "6 rep_pen")
        return value

    @field_validator("grammar", mode="before")
    @classmethod
    def _no_grammar(cls, value: Any) -> Any:
        return "" if value is None else value  # llama.cpp-style clients send "grammar": null


def sampler_fields(s: Samplers, n_ctx: int) -> dict[str, Any]:
    """The ``GenerationParams`` fields every dialect fills from its samplers (its prompt, length, logit bias
    and context rules are its own). ``n_ctx``: the window this request runs in, for ``-1`` ranges."""
    return {
        "temperature": s.temperature,
        "top_k": max(s.top_k, 0),
        "top_p": s.top_p,
        "min_p": s.min_p,
        "typical_p": s.typical,
        # KoboldCpp uses the largest of its three names for the repetition penalty
        "repeat_penalty": max(s.rep_pen, s.repeat_penalty or 0.0, s.repetition_penalty or 0.0),
        "repeat_last_n": n_ctx if s.rep_pen_range < 0 else s.rep_pen_range,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
        "mirostat": s.mirostat,
        "mirostat_tau": s.mirostat_tau,
        "mirostat_eta": s.mirostat_eta,
        "seed": s.sampler_seed,
        "stop": tuple(s.stop_sequence),
        "trim_stop": s.trim_stop,
        "ban_eos": s.ban_eos_token or s.use_default_badwordsids,
        "token_bans": tuple(s.custom_token_bans),
        "bypass_eos": s.bypass_eos,
        "render_special": s.render_special,
        "grammar": s.grammar,
        "banned_strings": tuple(s.banned_tokens + s.banned_strings),
        "top_a": s.top_a,
        "tfs": s.tfs,
        "nsigma": s.nsigma,
        "rep_pen_slope": s.rep_pen_slope,
        "dynatemp_range": s.dynatemp_range,
        "dynatemp_exponent": s.dynatemp_exponent,
        "smoothing_factor": s.smoothing_factor,
        "smoothing_curve": s.smoothing_curve,
        "dry_multiplier": s.dry_multiplier,
        "dry_base": s.dry_base,
        "dry_allowed_length": s.dry_allowed_length,
        "dry_penalty_last_n": n_ctx if s.dry_penalty_last_n < 0 else s.dry_penalty_last_n,
        "dry_sequence_breakers": tuple(s.dry_sequence_breakers),
        "xtc_threshold": s.xtc_threshold,
        "xtc_probability": s.xtc_probability,
        "sampler_order": tuple(s.sampler_order or ()),
    }


def generation_amount(requested: int | None, server: ServerSettings) -> int:
    """Tokens to generate: the request's (missing or 0: ``--defaultgenamt``), capped by ``--genlimit`` in every
    dialect."""
    n = requested or server.default_gen_amount
    return min(n, server.gen_limit) if server.gen_limit > 0 else n
