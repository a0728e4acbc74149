"""The measuring half of the flash-attention choice (``warren/flash_attention.py``): decode speed at a few
hundred tokens of context, with flash attention and without, on the loaded model.

How: two small contexts (one each way) read the same ``PROBE_DEPTH`` tokens once; then, in alternating
rounds so that a noisy neighbour hurts both alike, each decodes one token at that depth a few times (the
token is taken out again after each step, so the depth stays put). What is compared is the decode step at
depth, which is what flash attention changes; the prompt reading is not timed. Each setting counts its
fastest round: the machine's stalls only ever slow a round down (a kernel thread that holds a core for
15-60 ms, ``docs/benchmarks.md``), and summed over all rounds one such stall flipped the choice here (a fresh
clone measured on at 0.82x off, where 21 other measurements on the same machine gave 0.93-1.16x).

Cost: reading ``2 x PROBE_DEPTH`` tokens plus ``2 x ROUNDS x STEPS`` decode steps, once per model file,
machine, engine and thread count — 1.7-1.9 s for the default model on 2 cores with 3 rounds (measured
in-process); the 4 more rounds add ~50 steps of ~8 ms.
"""

from __future__ import annotations

import time
from typing import Any

import llama_cpp as L

from warren.flash_attention import PROBE_DEPTH, Measured

ROUNDS = 5
STEPS = 6


def measure(model: Any, vocab: Any, threads: int, type_k: int) -> Measured | None:
    """Tokens/s at ``PROBE_DEPTH`` with and without flash attention; None when a context cannot be made
    (the caller then leaves the choice to llama.cpp)."""
    contexts = {}
    try:
        for flash in (True, False):
            cp = L.llama_context_default_params()
            cp.n_ctx = PROBE_DEPTH + 64
            cp.n_batch = cp.n_ubatch = PROBE_DEPTH
            cp.n_seq_max = 1
            cp.n_threads = cp.n_threads_batch = threads
            cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
            cp.type_k = type_k
            cp.no_perf = True
            ctx = L.llama_init_from_model(model, cp)
            if not ctx:
                return None
            contexts[flash] = ctx
        n_vocab = L.llama_vocab_n_tokens(vocab)
        prompt = [(7 + 31 * i) % n_vocab for i in range(PROBE_DEPTH)]  # ordinary tokens; their meaning is moot
        arr = (L.llama_token * PROBE_DEPTH)(*prompt)
        for ctx in contexts.values():
            if L.llama_decode(ctx, L.llama_batch_get_one(arr, PROBE_DEPTH)) != 0:
                return None
        fastest = dict.fromkeys(contexts, float("inf"))
        one = (L.llama_token * 1)(prompt[-1])
        for _ in range(ROUNDS):
            for flash, ctx in contexts.items():
                memory = L.llama_get_memory(ctx)
                started = time.perf_counter()
                for _ in range(STEPS):
                    batch = L.llama_batch_get_one(one, 1)
                    if L.llama_decode(ctx, batch) != 0:
                        return None
                    L.llama_memory_seq_rm(memory, 0, PROBE_DEPTH, -1)  # back to the probe's depth
                fastest[flash] = min(fastest[flash], time.perf_counter() - started)
        return Measured(on=STEPS / fastest[True], off=STEPS / fastest[False])
    finally:
        for ctx in contexts.values():
            L.llama_free(ctx)
