"""In-process reference loops the benchmarks compare warren against (never imported by warren).

- ``bare_loop``: the leanest llama-cpp-python low-level loop: greedy sampler chain, one-token
  ``llama_decode`` per step, ``llama_token_to_piece`` — what the brief calls "a bare low-level loop".
- ``high_level``: ``Llama.create_completion``, llama-cpp-python's high-level API.
"""

from __future__ import annotations

import ctypes
import time
from pathlib import Path

import llama_cpp as L


class BareLoop:
    def __init__(self, path: Path, n_ctx: int = 2048, threads: int = 2) -> None:
        L.llama_backend_init()
        mp = L.llama_model_default_params()
        self.model = L.llama_model_load_from_file(str(path).encode(), mp)
        self.vocab = L.llama_model_get_vocab(self.model)
        cp = L.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_threads, cp.n_threads_batch = n_ctx, 512, threads, threads
        cp.no_perf = True
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.eos = L.llama_vocab_eos(self.vocab)

    def run(self, prompt: str, n: int) -> tuple[float, int]:
        """Generate exactly ``n`` tokens greedily (EOS banned); return (seconds incl. prompt, tokens)."""
        started = time.perf_counter()
        L.llama_memory_clear(L.llama_get_memory(self.ctx), True)
        raw = prompt.encode()
        buf = (L.llama_token * (len(raw) + 8))()
        k = L.llama_tokenize(self.vocab, raw, len(raw), buf, len(raw) + 8, False, True)
        L.llama_decode(self.ctx, L.llama_batch_get_one(buf, k))
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        bias = (L.llama_logit_bias * 1)(L.llama_logit_bias(self.eos, float("-inf")))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_logit_bias(L.llama_vocab_n_tokens(self.vocab), 1, bias))
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        one = (L.llama_token * 1)()
        piece = ctypes.create_string_buffer(256)
        out = []
        for i in range(n):
            tok = L.llama_sampler_sample(chain, self.ctx, -1)
            m = L.llama_token_to_piece(self.vocab, tok, piece, 256, 0, False)
            out.append(piece.raw[:m])
            if i + 1 < n:
                one[0] = tok
                L.llama_decode(self.ctx, L.llama_batch_get_one(one, 1))
        L.llama_sampler_free(chain)
        b"".join(out).decode("utf-8", "replace")
        return time.perf_counter() - started, n


class HighLevel:
    def __init__(self, path: Path, n_ctx: int = 2048, threads: int = 2) -> None:
        self.llm = L.Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False)
        self.eos = self.llm.token_eos()

    def run(self, prompt: str, n: int) -> tuple[float, int]:
        started = time.perf_counter()
        r = self.llm.create_completion(prompt, max_tokens=n, temperature=0, logit_bias={self.eos: -1e9})
        return time.perf_counter() - started, int(r["usage"]["completion_tokens"])
