"""Log-probabilities of the generated tokens, read from the logits of each step.

Why here and not from the sampler chain: OpenAI (and KoboldCpp) report the log-softmax of the model's raw logits
for that step — what the model thought, before temperature, penalties or bans — so it is computed from
``llama_get_logits_ith`` before any ban is written into that buffer. Only requests that ask pay for it: one
pass over the vocabulary per token (~0.1 ms for 49k tokens), measured in ``docs/api-compat.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import llama_cpp as L
import numpy as np

from warren.params import TokenLogprob


class LogprobReader:
    """Per step: ``read(index)`` before the token is picked (and before any ban is written into the logits),
    then ``entry(token)`` once it is."""

    def __init__(self, ctx: Any, n_vocab: int, top_n: int, piece: Callable[[int], bytes]) -> None:
        self.ctx, self.n_vocab, self.top_n, self.piece = ctx, n_vocab, top_n, piece
        self.logits = np.zeros(n_vocab, dtype=np.float32)
        self.lse = 0.0
        self.top: tuple[tuple[str, bytes, float], ...] = ()

    def read(self, index: int) -> None:
        raw = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))
        np.copyto(self.logits, raw)
        top = float(self.logits.max())
        self.lse = top + float(np.log(np.exp(self.logits - top, dtype=np.float64).sum()))
        if self.top_n:
            ids = np.argpartition(-self.logits, self.top_n)[: self.top_n]
            ids = ids[np.argsort(-self.logits[ids], kind="stable")]
            self.top = tuple(self._named(int(t)) for t in ids)

    def _named(self, token: int) -> tuple[str, bytes, float]:
        raw = self.piece(token)
        return raw.decode("utf-8", "replace"), raw, float(self.logits[token]) - self.lse

    def entry(self, token: int) -> TokenLogprob:
        text, raw, logprob = self._named(token)
        return TokenLogprob(text, raw, logprob, self.top)
