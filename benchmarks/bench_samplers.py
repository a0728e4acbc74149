"""Per-token cost of each sampler (issue 15): the chain applied to a full-vocabulary candidates array, with and
without the field, median of 300 applications. No model: ``samplers.build`` runs on a synthetic logits vector of
the default model's vocabulary size, so the figure is the sampler's alone (whole-generation A/Bs on a shared
machine were noisier than these differences). Figures in ``docs/api-compat.md``.

Run:  PYTHONPATH=. .venv/bin/python benchmarks/bench_samplers.py
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable
from typing import Any

import llama_cpp as L
import numpy as np

from warren.params import GenerationParams
from warren.worker import logprobs, samplers
from warren.worker.antislop import PhraseGuard

N_VOCAB = 49152  # SmolLM2's vocabulary
REPS = 300
CASES: dict[str, dict[str, Any]] = {
    "top_a": {"top_a": 0.01},
    "tfs": {"tfs": 0.99},
    "smoothing": {"smoothing_factor": 0.2},
    "rep_pen_slope": {"repeat_penalty": 1.1, "rep_pen_slope": 0.7},
    "rep_pen flat (C)": {"repeat_penalty": 1.1},
    "xtc (C)": {"xtc_probability": 0.5},
    "nsigma (C)": {"nsigma": 2.0},
    "dynatemp (C)": {"dynatemp_range": 0.5},
    "top_a before top_k": {"top_a": 0.01, "sampler_order": (6, 1, 0, 3, 4, 2, 5)},
    "tfs with top_k off": {"tfs": 0.99, "top_k": 0},
}


def median_ms(step: Callable[[], None]) -> float:
    times = []
    for _ in range(REPS):
        began = time.perf_counter()
        step()
        times.append(time.perf_counter() - began)
    return float(np.median(times)) * 1000


def main() -> None:
    logits = (np.random.default_rng(0).standard_normal(N_VOCAB) * 3).astype(np.float32)
    data = np.zeros(N_VOCAB, dtype=samplers.TOKEN_DATA)
    arr = L.llama_token_data_array(data.ctypes.data_as(ctypes.POINTER(L.llama_token_data)), N_VOCAB, -1, False)

    def chain_cost(**fields: Any) -> float:
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        samplers.build(GenerationParams(prompt="", temperature=1.0, **fields), None, N_VOCAB, 1, {},
                       list(range(0, 640, 2)), chain, chain)

        def step() -> None:
            data["id"] = np.arange(N_VOCAB)
            data["logit"] = logits
            arr.size, arr.selected, arr.sorted = N_VOCAB, -1, False
            L.llama_sampler_apply(chain, ctypes.byref(arr))

        setup = median_ms(lambda: (data.__setitem__("logit", logits), data.__setitem__("id", np.arange(N_VOCAB))))
        cost = median_ms(step) - setup
        samplers.free(chain)
        return cost

    base = chain_cost()
    print(f"default chain (top_k 100, top_p, temperature, pick): {base:.3f} ms")
    for name, fields in CASES.items():
        print(f"{name:24s} +{chain_cost(**fields) - base:.3f} ms/token")

    buf = (ctypes.c_float * N_VOCAB)(*logits)
    logprobs.L.llama_get_logits_ith = lambda _ctx, _i: buf  # the reader's one llama.cpp call, on the synthetic logits
    reader = logprobs.LogprobReader(None, N_VOCAB, 5, lambda _t: b"x")

    def read_step() -> None:
        reader.read(-1)
        reader.entry(5)

    print(f"{'logprobs, top 5':24s} +{median_ms(read_step):.3f} ms/token")

    guard = PhraseGuard(["shivers down her spine", "a testament to"] + [f"phrase number {i}" for i in range(98)])
    words = iter([" the", " quick", " brown", " fox", " shivers", " down", " slowly"] * REPS)

    def guard_step() -> None:
        guard.push(next(words), None)

    print(f"{'100 banned phrases':24s} +{median_ms(guard_step):.3f} ms/token")


if __name__ == "__main__":
    main()
