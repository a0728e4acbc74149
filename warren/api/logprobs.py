"""Token log-probabilities in each dialect's shape, from ``GenerationResult.logprobs`` (computed in the worker,
``warren/worker/logprobs.py``).

- OpenAI completions (``logprobs: N``): ``{tokens, token_logprobs, top_logprobs: [{token: logprob}], text_offset}``.
- OpenAI chat (``logprobs: true, top_logprobs: N``), and KoboldCpp's ``logprobs`` (its native route and
  ``/api/extra/last_logprobs`` use the chat shape): ``{"content": [{token, logprob, bytes, top_logprobs}]}``.

Streams carry them once, on the chunk that ends the stream, as KoboldCpp does.
"""

from __future__ import annotations

from typing import Any

from warren.params import GenerationResult


def completion(r: GenerationResult, offset: int = 0) -> dict[str, Any] | None:
    """``offset``: where the completion starts in the returned text (the prompt's length when echoed)."""
    if not r.logprobs:
        return None
    offsets, at = [], offset
    for e in r.logprobs:
        offsets.append(at)
        at += len(e.token)
    return {"tokens": [e.token for e in r.logprobs], "token_logprobs": [e.logprob for e in r.logprobs],
            "top_logprobs": [{t: lp for t, _, lp in e.top} for e in r.logprobs], "text_offset": offsets}


def chat(r: GenerationResult) -> dict[str, Any] | None:
    if not r.logprobs:
        return None
    return {"content": [{"token": e.token, "logprob": e.logprob, "bytes": list(e.raw),
                         "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(b)} for t, b, lp in e.top]}
                        for e in r.logprobs], "refusal": None}
