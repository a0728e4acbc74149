"""Embeddings in the worker: a second, small llama.cpp context on the loaded model, made for pooling.

Why a context of its own rather than switching the generation context with ``llama_set_embeddings``: the
generation context keeps the conversation's KV cache between requests (fast-forward, ContextShift, the
state kept across parking), and an embedding batch must start from an empty cache. A separate context
leaves the conversation's cache alone. What stays between requests is at most a ``MIN_SIZE`` context (its
KV cache and compute buffers: ~21 MiB for the default model, measured), made on first use and freed when the model
is parked; a larger one, made for a long input, is freed when its request ends.

- **Pooling**: the GGUF's own (``{arch}.pooling_type``: mean, CLS or last token for embedding models); a
  generative model declares none, and gets mean pooling, as llama-server's ``--pooling mean``. A reranker
  (rank pooling) gives scores, not vectors, and is refused.
- **Sizing**: ``n_ctx = n_batch = n_ubatch``: a non-causal model (BERT) must see a whole sequence in one
  micro-batch. The size grows to the longest input (at least ``MIN_SIZE``, so short inputs share a decode),
  never past the generation context's size, which is the model's context as the operator configured it.
- **Batches**: inputs are packed into decodes of at most ``size`` tokens and ``SEQUENCES_PER_DECODE``
  sequences, one sequence each, the cache cleared before each decode; ``llama_get_embeddings_seq`` reads
  each sequence's pooled vector.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Callable

import llama_cpp as L
import numpy as np

from warren.bounds import EMBED_MAX_TOKENS
from warren.embeddings import EmbeddingResult, EmbedRequest, Truncate
from warren.errors import ClientGone, InvalidRequest, PromptTooLong, WarrenError

SEQUENCES_PER_DECODE = 64  # sequences of one decode: well under llama.cpp's LLAMA_MAX_SEQ (256)
MIN_SIZE = 512  # tokens: a context this large packs many short inputs (sentences) into one decode


def pooling_of(model: object) -> int:
    """The model's pooling type from its GGUF; mean for a model that declares none (a generative one)."""
    def meta(key: str) -> str:
        buf = ctypes.create_string_buffer(128)
        n = L.llama_model_meta_val_str(model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", "replace") if n >= 0 else ""

    declared = meta(f"{meta('general.architecture')}.pooling_type")
    pooling = int(declared) if declared.lstrip("-").isdigit() else L.LLAMA_POOLING_TYPE_NONE
    if pooling == L.LLAMA_POOLING_TYPE_RANK:
        raise InvalidRequest("this model is a reranker (rank pooling): it scores pairs of texts, it gives no "
                             "embedding vectors", param="model")
    if pooling in (L.LLAMA_POOLING_TYPE_NONE, L.LLAMA_POOLING_TYPE_UNSPECIFIED):
        return L.LLAMA_POOLING_TYPE_MEAN
    return pooling


class Embedder:
    """The embeddings context of one loaded model. Runs on the worker's main thread only."""

    def __init__(self, model: object, vocab: object, limit: int,
                 tokenize: Callable[[str], list[int]]) -> None:
        """``limit``: the most tokens of one input (the generation context's size); ``tokenize``: a text to
        token ids as the model expects them for an embedding (BOS/EOS where its vocabulary adds them)."""
        if L.llama_model_has_encoder(model) and L.llama_model_has_decoder(model):
            raise InvalidRequest("embeddings from an encoder-decoder model are not supported", param="model")
        self.model, self.vocab, self.limit, self.tokenize = model, vocab, limit, tokenize
        self.pooling = pooling_of(model)
        self.dim = int(L.llama_model_n_embd(model))
        self.n_vocab = int(L.llama_vocab_n_tokens(vocab))
        self.encode = L.llama_encode if L.llama_model_has_encoder(model) else L.llama_decode
        self.ctx: object | None = None
        self.size = 0

    def close(self) -> None:
        if self.ctx is not None:
            L.llama_free(self.ctx)
            self.ctx = None
            self.size = 0

    def run(self, request: EmbedRequest, threads: int, cancelled: Callable[[], bool] = lambda: False
            ) -> EmbeddingResult:
        """``cancelled`` is looked at before each decode: a request whose client left ends there (``ClientGone``)."""
        started = time.perf_counter()
        sequences = [self._tokens(i, item, request.truncate) for i, item in enumerate(request.inputs)]
        total = sum(len(s) for s in sequences)
        if total > EMBED_MAX_TOKENS:
            raise InvalidRequest(f"{total} tokens in one request; the limit is {EMBED_MAX_TOKENS}", param="input",
                                 hint="send them in several requests")
        self._ensure_size(max(len(s) for s in sequences), total, threads)
        out = np.empty((len(sequences), self.dim), dtype=np.float32)
        start = 0
        try:
            while start < len(sequences):
                end, used = start, 0
                while end < len(sequences) and end - start < SEQUENCES_PER_DECODE and \
                        used + len(sequences[end]) <= self.size:
                    used += len(sequences[end])
                    end += 1
                if cancelled():
                    raise ClientGone("the embeddings request was cancelled: its client left")
                self._decode(sequences[start:end], out[start:end], threads)
                start = end
        finally:
            if self.size > MIN_SIZE:  # made for a long input: not kept, so what stays is small and known
                self.close()
        if request.normalize:
            norms = np.linalg.norm(out, axis=1, keepdims=True)
            out /= np.where(norms > 0, norms, 1.0)
        return EmbeddingResult(out.astype("<f4").tobytes(), self.dim, tuple(len(s) for s in sequences),
                               time.perf_counter() - started)

    def _tokens(self, index: int, item: str | tuple[int, ...], truncate: Truncate) -> list[int]:
        if isinstance(item, str):
            tokens = self.tokenize(item)
        else:
            tokens = list(item)
            bad = [t for t in tokens if not 0 <= t < self.n_vocab]
            if bad:
                raise InvalidRequest(f"input {index}: token id {bad[0]} is outside the vocabulary [0, {self.n_vocab})",
                                     param="input")
        if not tokens:
            raise InvalidRequest(f"input {index} is empty: it has no tokens to embed", param="input")
        if len(tokens) <= self.limit:
            return tokens
        if truncate is Truncate.KEEP_START:
            return tokens[: self.limit]
        if truncate is Truncate.KEEP_END:  # as KoboldCpp: the newest text stays, the first token (BOS) is put back
            bos = int(L.llama_vocab_bos(self.vocab))
            head = [bos] if L.llama_vocab_get_add_bos(self.vocab) and bos >= 0 else []
            return head + tokens[len(tokens) - (self.limit - len(head)):]
        raise PromptTooLong(f"input {index} is {len(tokens)} tokens, but the model's context is {self.limit} tokens",
                            param="input", hint="shorten the input, or start the model with a larger --contextsize")

    def _ensure_size(self, longest: int, total: int, threads: int) -> None:
        """A context that holds the longest input (and ``MIN_SIZE`` tokens, or the whole request if less): made
        on first use and again, larger, when an input does not fit; never smaller than before."""
        wanted = min(self.limit, max(longest, min(total, MIN_SIZE)))
        # llama.cpp reserves its worst-case graph with n_ubatch tokens rounded up to a multiple of n_seq_max, and
        # mean pooling then needs an output for each of them: a size that is a multiple of n_seq_max is exact.
        wanted = -(-wanted // SEQUENCES_PER_DECODE) * SEQUENCES_PER_DECODE
        if self.ctx is not None and self.size >= wanted:
            return
        self.close()
        cp = L.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = wanted
        cp.n_seq_max = SEQUENCES_PER_DECODE
        cp.kv_unified = True  # the sequences share the cells: n_ctx tokens in all, not n_ctx per sequence
        cp.embeddings = True
        cp.pooling_type = self.pooling
        cp.n_threads = cp.n_threads_batch = threads
        cp.no_perf = True
        ctx = L.llama_init_from_model(self.model, cp)
        if not ctx:
            raise WarrenError(f"llama.cpp could not create an embeddings context of {wanted} tokens (out of memory?)")
        self.ctx, self.size = ctx, wanted

    def _decode(self, sequences: list[list[int]], out: np.ndarray, threads: int) -> None:
        n = sum(len(s) for s in sequences)
        batch = L.llama_batch_init(n, 0, 1)
        try:
            i = 0
            for seq, tokens in enumerate(sequences):
                for pos, token in enumerate(tokens):
                    batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
                    batch.seq_id[i][0] = seq
                    batch.logits[i] = True
                    i += 1
            batch.n_tokens = n
            memory = L.llama_get_memory(self.ctx)
            if memory:  # an encoder-only model has no cache
                L.llama_memory_clear(memory, True)
            L.llama_set_n_threads(self.ctx, threads, threads)
            rc = self.encode(self.ctx, batch)
            if rc != 0:
                raise WarrenError(f"llama.cpp failed to embed a batch of {len(sequences)} inputs (code {rc})")
            for seq in range(len(sequences)):
                pointer = L.llama_get_embeddings_seq(self.ctx, seq)
                if not pointer:
                    raise WarrenError("llama.cpp gave no pooled embedding for a sequence")
                out[seq] = np.ctypeslib.as_array(pointer, shape=(self.dim,))
        finally:
            L.llama_batch_free(batch)
