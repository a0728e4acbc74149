"""KoboldCpp request -> ``GenerationParams``, and results -> KoboldCpp response fields.

The numbers follow KoboldCpp's ``generate()``: ``max_length`` defaults to ``--defaultgenamt`` and is
capped by ``--genlimit``; ``max_context_length`` is clamped to the loaded context; a generation that
would leave too little room for the prompt is cut to ``ctx - max(min(ctx-4, 16), ctx/5)``; an
over-long prompt loses its oldest tokens.
"""

from __future__ import annotations

from warren.api.kobold.schemas import GenerateRequest
from warren.api.sampling import KOBOLD_LOGPROBS, generation_amount, sampler_fields
from warren.grammar import Constraints
from warren.params import FinishReason, GenerationParams, GenerationResult
from warren.settings import ServerSettings

LOGIT_BIAS_LIMIT = 100.0  # KoboldCpp clamps biases to [-100, 100]


def constraints(req: GenerateRequest) -> Constraints:
    """The request's grammar, checked before a model is chosen (``warren.grammar``)."""
    return Constraints(grammar=req.grammar, grammar_param="grammar")


def to_params(req: GenerateRequest, server: ServerSettings, n_ctx: int) -> GenerationParams:
    ctx = min(req.max_context_length or n_ctx, n_ctx)
    max_length = generation_amount(req.max_length, server)
    hard = max(min(ctx - 4, 16), int(ctx * 0.2))
    if max_length >= ctx - hard:
        max_length = max(1, ctx - hard)
    return GenerationParams(
        prompt=req.memory + req.prompt,
        keep_text=req.memory,
        max_tokens=max_length,
        **sampler_fields(req, ctx),
        logit_bias={int(k): max(-LOGIT_BIAS_LIMIT, min(LOGIT_BIAS_LIMIT, v)) for k, v in req.logit_bias.items()},
        logprobs=req.logprobs,
        top_logprobs=KOBOLD_LOGPROBS if req.logprobs else 0,
        context_limit=ctx,
        truncate_prompt=True,
    )


def finish_reason(reason: FinishReason) -> str:
    """KoboldCpp says "stop" only for the end-of-sequence token; stop strings and length are "length"."""
    return "stop" if reason is FinishReason.STOP else "length"


# KoboldCpp's stop_reason codes in /api/extra/perf: -1 invalid, 0 out of tokens, 1 EOS, 2 custom stopper.
STOP_REASON = {FinishReason.LENGTH: 0, FinishReason.STOP: 1, FinishReason.STOP_SEQUENCE: 2, FinishReason.ABORT: 0}


def perf_fields(last: GenerationResult | None) -> dict[str, float | int]:
    """KoboldCpp's figures for the last generation (``/api/extra/perf``), from the pool's generic result."""
    if last is None:
        return {"last_process": 0.0, "last_eval": 0.0, "last_token_count": 0, "last_input_count": 0,
                "last_process_time": 0.0, "last_eval_time": 0.0, "last_process_speed": 0, "last_eval_speed": 0,
                "last_seed": 0, "stop_reason": -1}
    return {
        "last_process": last.prompt_seconds * 1000 / max(last.prompt_tokens, 1),
        "last_eval": last.generation_seconds * 1000 / max(last.completion_tokens, 1),
        "last_token_count": last.completion_tokens, "last_input_count": last.prompt_tokens,
        "last_process_time": last.prompt_seconds, "last_eval_time": last.generation_seconds,
        "last_process_speed": last.prompt_tokens / last.prompt_seconds if last.prompt_seconds else 0,
        "last_eval_speed": last.completion_tokens / last.generation_seconds if last.generation_seconds else 0,
        "last_seed": last.seed, "stop_reason": STOP_REASON[last.finish_reason],
    }
