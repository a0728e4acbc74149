"""The real engine: llama.cpp through llama-cpp-python's low-level C API. The only ``llama_cpp`` import.

Why the low-level API rather than ``Llama.create_completion``: the high-level call does Python work
per token (logits copies into numpy, Python-side sampling bookkeeping) and runs at ~110–127 tokens/s
on the default model here, where llama.cpp's own loop does ~150. This loop keeps per-token Python to
a handful of ctypes calls: ``llama_sampler_sample`` (the C sampler chain, which also accepts the
token), ``llama_token_to_piece`` into a reused buffer, and ``llama_decode`` of a one-token batch.

The KV cache is kept between requests: a new prompt that shares a prefix with the previous one
(chat turns, KoboldAI stories) only decodes the new part.

Grammars: every grammar is checked again here, right before llama.cpp (``warren/grammar``), with this
model's vocabulary, and so is the grammar the JSON-schema converter makes. A request with a grammar
samples through ``GuardedSampler`` instead of ``llama_sampler_sample``: llama.cpp aborts the process
when a grammar leaves no token to accept, which a valid grammar can do together with the request's own
bans (``ban_eos``, banned strings), and only a check between the grammar and the pick can see that.
Requests without a grammar keep the one-call fast path.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import dataclasses
import json
import os
import random
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import llama_cpp as L
import numpy as np

from warren import flash_attention
from warren.bounds import GRAMMAR_STEP_SECONDS
from warren.embeddings import EmbeddingResult, EmbedRequest
from warren.errors import (
    GrammarRejected,
    InvalidRequest,
    PromptTooLong,
    WarrenError,
    WorkerClosed,
    WorkerLoadFailed,
)
from warren.grammar import check_gbnf, check_schema
from warren.model_info import ModelInfo
from warren.params import FinishReason, GenerationParams, GenerationResult, TokenLogprob
from warren.settings import ModelSettings
from warren.worker import flash_probe, kvfile, kvstate, samplers, shift
from warren.worker.antislop import MAX_REWINDS, PhraseGuard
from warren.worker.batching import BatchRunner
from warren.worker.embedding import Embedder
from warren.worker.logprobs import LogprobReader
from warren.worker.parking import anonymous_resident, drop_file_pages, trim_heap
from warren.worker.prefault import Prefault
from warren.worker.stops import StopMatcher

GGML_LOG_WARN, GGML_LOG_ERROR, GGML_LOG_CONT = 3, 4, 5  # ggml.h: 1 debug, 2 info, 3 warn, 4 error, 5 cont


@L.llama_log_callback
def _log_to_stderr(level: int, text: bytes, _user: Any) -> None:
    """llama.cpp's warnings and errors only: stderr feeds the supervisor's crash ring, and its info
    level prints hundreds of lines per load. WARREN_WORKER_DEBUG=1 keeps everything."""
    if level == GGML_LOG_CONT:
        level = _last_level[0]
    else:
        _last_level[0] = level
    if level in (GGML_LOG_WARN, GGML_LOG_ERROR):
        os.write(2, text)


_last_level = [0]

KV_TYPES = {0: L.GGML_TYPE_F16, 1: L.GGML_TYPE_Q8_0, 2: L.GGML_TYPE_Q4_0}
UBATCH_MAX = 512  # llama.cpp's default micro-batch


def _schema_grammar(schema: str) -> str:
    """JSON schema -> GBNF with llama-cpp-python's converter (here in the worker: it imports llama_cpp).
    The schema's bounds are checked first (again: the supervisor did), since the converter itself can
    write a grammar of any size."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    try:
        check_schema(json.loads(schema))
    except GrammarRejected as exc:
        raise GrammarRejected(exc.message, param="json_schema") from None
    except ValueError:
        raise GrammarRejected("the JSON schema is not valid JSON", param="json_schema") from None
    try:
        return str(json_schema_to_gbnf(schema))
    except Exception as exc:  # the converter raises assorted errors for schemas it cannot express
        raise GrammarRejected(f"the JSON schema cannot be turned into a grammar: {str(exc)[:200]}",
                              param="json_schema") from None


TOKEN_DATA = samplers.TOKEN_DATA


class Vocabulary:
    """This model's token facts for ``warren.grammar.check_gbnf`` (``warren.grammar.Vocabulary``)."""

    def __init__(self, vocab: Any) -> None:
        self.vocab = vocab
        self.n_vocab = int(L.llama_vocab_n_tokens(vocab))
        self.buf = ctypes.create_string_buffer(256)

    def is_eog(self, token: int) -> bool:
        return bool(L.llama_vocab_is_eog(self.vocab, token))

    def piece(self, token: int) -> bytes:
        """The piece as llama.cpp's grammar sees it (special tokens rendered)."""
        n = L.llama_token_to_piece(self.vocab, token, self.buf, len(self.buf), 0, True)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, token, big, -n, 0, True)
            return big.raw[:n]
        return self.buf.raw[:n]

    def single_token(self, text: str) -> int | None:
        raw = text.encode("utf-8")
        out = (L.llama_token * 2)()
        n = L.llama_tokenize(self.vocab, raw, len(raw), out, 2, False, True)
        return int(out[0]) if n == 1 else None


class GuardedSampler:
    """Sampling for requests with a grammar: two chains with a check between them.

    ``pre`` (logit biases, penalties, the grammar) is applied to all logits; if it leaves every
    candidate at -inf the grammar is at a dead end, and ``sample`` returns None instead of letting
    ``post`` pick a token the grammar cannot accept (llama.cpp would throw "Unexpected empty grammar
    stack" through C frames: SIGABRT). Otherwise ``post`` (top-k … and the pick) runs and both chains
    accept the token — the same samplers in the same order as the one-chain path, so a seeded request
    gives the same text. A step slower than ``GRAMMAR_STEP_SECONDS`` ends the request: grammar stacks
    can multiply at run time in ways no static check bounds.
    """

    def __init__(self, ctx: Any, n_vocab: int, pre: Any, post: Any) -> None:
        self.ctx, self.n_vocab, self.pre, self.post = ctx, n_vocab, pre, post
        self.data = np.zeros(n_vocab, dtype=TOKEN_DATA)
        assert self.data.itemsize == ctypes.sizeof(L.llama_token_data)
        self.ids = np.arange(n_vocab, dtype=np.int32)
        self.array = L.llama_token_data_array(self.data.ctypes.data_as(ctypes.POINTER(L.llama_token_data)),
                                              n_vocab, -1, False)
        self.pointer = ctypes.byref(self.array)

    def sample(self, index: int = -1) -> int | None:
        """The token for the logits of batch entry ``index`` (-1: the last), or None at a dead end."""
        started = time.perf_counter()
        logits = np.ctypeslib.as_array(L.llama_get_logits_ith(self.ctx, index), shape=(self.n_vocab,))
        data, array = self.data, self.array
        data["id"] = self.ids
        data["logit"] = logits
        data["p"] = 0.0
        array.size, array.selected, array.sorted = self.n_vocab, -1, False
        L.llama_sampler_apply(self.pre, self.pointer)
        if not np.isfinite(data["logit"]).any():
            return None
        L.llama_sampler_apply(self.post, self.pointer)
        chosen = data[array.selected] if 0 <= array.selected < array.size else None
        if chosen is None or not np.isfinite(chosen["logit"]):  # cannot happen with llama.cpp's samplers
            chosen = data[int(np.argmax(data["logit"]))]
        token = int(chosen["id"])
        L.llama_sampler_accept(self.pre, token)
        L.llama_sampler_accept(self.post, token)
        seconds = time.perf_counter() - started
        if seconds > GRAMMAR_STEP_SECONDS:
            raise GrammarRejected(f"the grammar took {seconds:.1f} s for one token (the limit is "
                                  f"{GRAMMAR_STEP_SECONDS:g} s): it is too ambiguous; simplify it", param="grammar")
        return token

    def free(self) -> None:
        L.llama_sampler_free(self.pre)
        samplers.free(self.post)


def _model_key(settings: ModelSettings) -> tuple[Any, ...]:
    """The settings the model itself (not its context) is loaded with."""
    return (str(settings.path), _load_mode(settings), settings.gpu_layers)


def _load_mode(settings: ModelSettings) -> int:
    if settings.use_mlock:  # validation guarantees mmap here: MLOCK without MMAP is the #1323 crash
        return L.LLAMA_LOAD_MODE_MMAP_MLOCK
    return L.LLAMA_LOAD_MODE_MMAP if settings.use_mmap else L.LLAMA_LOAD_MODE_NONE


class LlamaEngine:
    def __init__(self) -> None:
        L.llama_backend_init()
        if not os.environ.get("WARREN_WORKER_DEBUG"):
            L.llama_log_set(_log_to_stderr, ctypes.c_void_p(0))
        self.model: Any = None
        self.model_key: tuple[Any, ...] = ()  # what the loaded model was loaded with (a resume must match)
        self.model_path: str = ""
        self.ctx: Any = None
        self.vocab: Any = None
        self.n_ctx = 0
        self.n_batch = 512
        self.cached: list[int] = []  # tokens whose K/V are in the cache (sequence 0), in order
        self.eog_tokens: list[int] = []
        self.embedder: Embedder | None = None  # the embeddings context, made on first use (``embedding.py``)
        self.vocabulary: Vocabulary | None = None  # token facts for grammar checks, made on first use
        self.piece_buf = ctypes.create_string_buffer(256)
        self.one_token = (L.llama_token * 1)()
        self.threads_wanted: tuple[int, tuple[int, ...]] | None = None  # the pool's share (SetThreads), if any
        self.share_changed = threading.Condition()  # a new share, or a Cancel, for a worker paused by the pool
        self.parallel = 1  # sequences in the context (--parallelrequests)
        self.flash: bool | None = None  # flash attention in the current context (None: llama.cpp's auto)
        self.flash_measured: flash_attention.Measured | None = None
        self.flash_known: dict[str, flash_attention.Measured] = {}  # measurements this worker has used, by key
        self.runner: BatchRunner | None = None  # stepping them, when there are several
        self.threads_applied: tuple[int, tuple[int, ...]] | None = None
        self.context_shift = False  # ContextShift on for this context (asked, and the cache can shift)
        self.shift_refused_said = False  # "cannot shift" is logged once per worker
        self.context_key: tuple[Any, ...] = ()  # what the context's cells depend on (``kvstate.state_key``)
        self.saved: kvstate.SavedState | None = None  # the sequences kept while parked (``kvstate.py``)
        self.disk: tuple[Path, int] | None = None  # --kvcache-dir and its size bound (``kvfile.py``), if any
        self.restored: dict[str, Any] = {}  # where the last context's state came from, for the Ready frame
        self.entry_name = ""  # the catalog entry loaded (part of a disk file's key)
        self.parked_context = False  # parked with its whole context kept (``park(keep_context=True)``)
        self.anon_before_context = 0  # this process's anonymous resident bytes before the context was made

    @staticmethod
    def build_info() -> dict[str, Any]:
        """What the engine was built with: version, the CPU features llama.cpp reports, GPU offload."""
        info = (L.llama_print_system_info() or b"").decode("utf-8", "replace")
        return {"version": L.__version__, "system_info": info.strip(),
                "gpu_offload": bool(L.llama_supports_gpu_offload())}

    # -- load ---------------------------------------------------------------------------------------
    def load(self, settings: ModelSettings, progress: Callable[[float], None], prefault: Prefault | None = None
             ) -> ModelInfo:
        """``prefault``: the KV cache's memory, faulted in on the other core while the model loads."""
        prefault = prefault or Prefault(0)
        prefault.start()
        try:
            return self._load(settings, progress, prefault)
        finally:
            prefault.finish()

    def _load(self, settings: ModelSettings, progress: Callable[[float], None], prefault: Prefault
              ) -> ModelInfo:
        if self.model is None:
            self._load_model(settings, progress)
        elif (self.ctx is not None and not self.parked_context) or self.model_key != _model_key(settings):
            raise WorkerLoadFailed("this worker holds another model already; a worker loads one model")
        else:
            progress(1.0)  # resuming a parked model: only the context is new — or not even that
            if self._resume_context(settings):
                return self._model_info()
        prefault.release()  # the context's KV cache, allocated next, takes the pre-faulted block
        return self._new_context(settings, prefaulted=prefault.touched)

    def _resume_context(self, settings: ModelSettings) -> bool:
        """Resuming a worker parked with its context: the same context goes on, cells and all, when the settings
        still give it the same shape; otherwise it is freed and a new one is made."""
        if not self.parked_context:
            return False
        self.parked_context = False
        if self.context_key[:-1] != kvstate.state_key(settings):  # (the last part: flash attention, as measured)
            self._free_context()
            return False
        self.threads_applied = None  # the pool's share applies again from the next step
        self.restored = {"from": "context", "tokens": len(self.cached)}
        return True

    def _load_model(self, settings: ModelSettings, progress: Callable[[float], None]) -> None:
        mp = L.llama_model_default_params()
        mp.n_gpu_layers = settings.gpu_layers
        mp.load_mode = _load_mode(settings)

        def on_progress(fraction: float, _user: Any) -> bool:
            progress(float(fraction))
            return True

        callback = L.llama_progress_callback(on_progress)  # kept alive by this frame until load returns
        mp.progress_callback = callback
        self.model = L.llama_model_load_from_file(os.fsencode(settings.path), mp)
        if not self.model:
            raise WorkerLoadFailed(f"llama.cpp could not load {settings.path} (its log is in the worker's stderr)")
        self.vocab = L.llama_model_get_vocab(self.model)
        self.vocabulary = None
        self.model_key, self.model_path = _model_key(settings), str(settings.path)

    def _new_context(self, settings: ModelSettings, prefaulted: int = 0) -> ModelInfo:
        """``prefaulted``: bytes of freed heap already resident that the KV cache's allocation takes (the
        ``Prefault`` block), counted as the context's in ``context_bytes``."""
        cp = L.llama_context_default_params()
        cp.n_ctx = settings.context_size
        self.n_batch = settings.batch_size if settings.batch_size > 0 else 16  # KoboldCpp -1: no big batches
        cp.n_batch = self.n_batch
        cp.n_ubatch = min(self.n_batch, UBATCH_MAX)
        self.parallel = max(1, settings.parallel)
        cp.n_seq_max = self.parallel
        cp.kv_unified = self.parallel > 1  # the sequences share the context's cells: memory of one context
        cp.n_threads = settings.threads
        cp.n_threads_batch = settings.batch_threads or settings.threads
        # --flashattention forces it on, --noflashattention off; otherwise it is what decodes faster here.
        self.flash = self._flash_attention(settings)
        cp.flash_attn_type = L.LLAMA_FLASH_ATTN_TYPE_AUTO if self.flash is None else \
            L.LLAMA_FLASH_ATTN_TYPE_ENABLED if self.flash else L.LLAMA_FLASH_ATTN_TYPE_DISABLED
        cp.type_k = KV_TYPES[settings.quant_kv]
        cp.type_v = KV_TYPES[settings.quant_kv] if settings.flash_attention == "on" else L.GGML_TYPE_F16
        if settings.rope_freq_base > 0:
            cp.rope_freq_base = settings.rope_freq_base
        if settings.rope_freq_scale > 0:
            cp.rope_freq_scale = settings.rope_freq_scale
        cp.no_perf = True
        self.anon_before_context = anonymous_resident() - prefaulted
        self.ctx = L.llama_init_from_model(self.model, cp)
        self.threads_applied = None  # a new context runs settings.threads: the pool's share applies again
        self._close_runner()
        self.cached = []
        if not self.ctx:
            raise WorkerLoadFailed(f"llama.cpp could not create a context of {settings.context_size} tokens "
                                   f"for {settings.path} (out of memory?)")
        self.n_ctx = L.llama_n_ctx(self.ctx)
        self.context_shift = settings.context_shift and shift.can_shift(self.ctx)
        if settings.context_shift and not self.context_shift and not self.shift_refused_said:
            self.shift_refused_said = True
            print(f"warren worker: llama.cpp cannot shift this model's cache ({Path(settings.path).name}): "
                  "a trimmed prompt is decoded again from the cut (no ContextShift)", file=sys.stderr, flush=True)
        self._restore_state(settings)
        self.eog_tokens = []  # found on first use (ban_eos): a vocabulary scan costs ~25 ms of every load
        return self._model_info()

    def _model_info(self) -> ModelInfo:
        n_vocab = L.llama_vocab_n_tokens(self.vocab)
        template = L.llama_model_chat_template(self.model, None)
        return ModelInfo(
            n_ctx=self.n_ctx, n_ctx_train=L.llama_model_n_ctx_train(self.model), n_vocab=n_vocab,
            n_params=L.llama_model_n_params(self.model), size=L.llama_model_size(self.model),
            chat_template=template.decode("utf-8", "replace") if template else None,
            bos_token=self._token_text(L.llama_vocab_bos(self.vocab)),
            eos_token=self._token_text(L.llama_vocab_eos(self.vocab)),
            add_bos=bool(L.llama_vocab_get_add_bos(self.vocab)), gpu_offload=bool(L.llama_supports_gpu_offload()),
            flash_attention="auto" if self.flash is None else "on" if self.flash else "off",
            extra={**({"flash_attention_measured": dataclasses.asdict(self.flash_measured)} if self.flash_measured
                      else {}), **({"kv_state": self.restored} if self.restored else {})})

    def _flash_attention(self, settings: ModelSettings) -> bool | None:
        """On, off, or None for llama.cpp's own "auto" (a model offloaded to a GPU): forced by the settings, or
        measured on this CPU the first time this model is loaded here (``warren/flash_attention.py``)."""
        self.flash_measured = None
        if settings.flash_attention != "auto":
            return settings.flash_attention == "on"
        if settings.gpu_layers > 0 and L.llama_supports_gpu_offload():
            return None
        key = flash_attention.key(Path(settings.path), settings.threads, settings.quant_kv, L.__version__)
        measured = self.flash_known.get(key) or flash_attention.recall(key)  # a resume reads no file
        if measured is None:
            measured = flash_probe.measure(self.model, self.vocab, settings.threads, KV_TYPES[settings.quant_kv])
            if measured is None:
                return None
            flash_attention.remember(key, measured)
            print(f"warren worker: flash attention measured at {measured.depth} tokens of context: "
                  f"{measured.on:.1f} tokens/s on, {measured.off:.1f} off: {'on' if measured.choice else 'off'}",
                  file=sys.stderr, flush=True)
        self.flash_measured = self.flash_known[key] = measured
        return measured.choice

    def park(self, keep_state_bytes: int = -1, keep_context: bool = False) -> int:
        """Give back what a quick return does not need: the weights' pages and the embeddings context, and the
        generation context unless ``keep_context`` allows keeping it whole (its measured bytes at most
        ``keep_state_bytes``, negative: any size) — then a resume is instant and the conversation's cells stay
        where they are. Otherwise the context is freed, keeping the cached sequences' KV state when it takes at
        most ``keep_state_bytes``. Returns the bytes kept for the conversation (the context's or the state's)."""
        self.saved = None
        self._close_embedder()
        if self.ctx is not None and keep_context:
            size = self.context_bytes()
            if keep_state_bytes < 0 or size <= keep_state_bytes:
                self.parked_context = True
                self._drop_weights_pages()
                return size
        # One sequence only: with --parallelrequests the sequences share a unified cache, and a sequence put
        # back there was seen to give other greedy text than before the park (issue 14): not kept, for now.
        if self.ctx is not None and keep_state_bytes != 0 and self.parallel == 1:
            self.saved = kvstate.save(self.ctx, self.context_key, [(0, self.cached)], keep_state_bytes)
        self._free_context()
        self._drop_weights_pages()
        return self.saved.nbytes if self.saved is not None else 0

    def context_bytes(self) -> int:
        """What the context holds in this process now (KV cache and compute buffers, as resident memory): the
        anonymous resident bytes gained since just before it was made."""
        return max(0, anonymous_resident() - self.anon_before_context)

    def _free_context(self) -> None:
        self._close_runner()
        if self.ctx is not None:
            L.llama_free(self.ctx)
            self.ctx = None
        self.parked_context = False
        self.cached = []

    def _drop_weights_pages(self) -> None:
        trim_heap()
        if self.model_key and self.model_key[1] == L.LLAMA_LOAD_MODE_MMAP:
            drop_file_pages(Path(self.model_path))

    def drop_state(self) -> None:
        """The pool needs the memory kept for the conversation back (``DropState``): the saved state, or the
        context kept whole. The next load decodes from scratch, unless the disk tier keeps the state (written
        there first: the file costs no memory)."""
        if self.parked_context:
            if self.disk is not None and self.parallel == 1:
                state = kvstate.save(self.ctx, self.context_key, [(0, self.cached)], -1)
                if state is not None:
                    self._write_state(state)
            self._free_context()
        if self.saved is not None and self.disk is not None:
            self._write_state(self.saved)
        self.saved = None
        trim_heap()

    def set_disk_tier(self, directory: str, limit: int) -> None:
        """``--kvcache-dir``: where states go before this worker stops, and come from when it has none."""
        self.disk = (Path(directory), limit) if directory and limit > 0 else None

    def save_state(self) -> int:
        """``SaveState``, before the pool stops this worker: write the cached conversation to the disk tier — the
        context's cells, or the state kept while parked. The bytes written (0: nothing to keep, or no tier)."""
        if self.disk is None:
            return 0
        state = self.saved
        if self.ctx is not None and self.parallel == 1:
            state = kvstate.save(self.ctx, self.context_key, [(0, self.cached)], -1)
        return self._write_state(state) if state is not None else 0

    def _disk_key(self, key: tuple[Any, ...]) -> tuple[Any, ...]:
        """A file outlives this process: its key also names the engine, whose state layout is its own, and the
        catalog entry — two entries of one model file would otherwise overwrite each other's conversation."""
        return (*key, "llama-cpp-python", L.__version__, self.entry_name)

    def _write_state(self, state: kvstate.SavedState) -> int:
        assert self.disk is not None
        directory, limit = self.disk
        sequences = [kvfile.StoredSequence(s.seq_id, s.tokens, s.data) for s in state.sequences]
        try:
            path = kvfile.write(directory, self._disk_key(state.key), sequences, limit)
        except OSError as exc:  # a full or read-only disk loses the state, not the worker
            print(f"warren worker: could not write the KV state to {directory}: {exc}", file=sys.stderr, flush=True)
            return 0
        return path.stat().st_size if path is not None else 0

    def _restore_state(self, settings: ModelSettings) -> None:
        """Put the sequences saved at park back into the new context, if it has the same shape — or, with none
        in memory, the state the disk tier holds for this key (a worker that was stopped, or warren restarted).
        Either way the saved bytes are freed (the context holds them now, or they cannot be used)."""
        self.context_key = (*kvstate.state_key(settings), self.flash)  # flash attention stores V otherwise
        self.entry_name = settings.name
        saved, self.saved = self.saved, None
        self.restored = {}
        source = "memory"
        if saved is None and self.disk is not None and self.parallel == 1:
            refused: list[str] = []
            stored = kvfile.read(self.disk[0], self._disk_key(self.context_key), refused.append)
            if refused:
                self.restored = {"refused": refused[0]}
            if stored:
                saved = kvstate.SavedState(self.context_key, tuple(
                    kvstate.SavedSequence(s.seq_id, s.tokens, s.data) for s in stored))
                source = "disk"
        if saved is None or saved.key != self.context_key:
            return
        self.cached = kvstate.restore(self.ctx, saved).get(0, [])
        self.restored = {"from": source, "tokens": len(self.cached)}
        del saved
        trim_heap()

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return (L.llama_vocab_get_text(self.vocab, token) or b"").decode("utf-8", "replace")

    def _require_context(self) -> None:
        """Parked (or never loaded), a worker decodes nothing, even with its context kept: the pool owns the
        memory and cores it would take, and gave them to another model."""
        if self.ctx is None or self.parked_context:
            raise WorkerClosed("the model is parked: it needs a Load to get a context back")

    # -- embeddings (``warren/worker/embedding.py``) ----------------------------------------------------
    def embed(self, request: EmbedRequest, cancelled: Callable[[], bool] = lambda: False) -> EmbeddingResult:
        """Every input of ``request`` in its own context (the generation's KV cache is left as it is), on the
        threads the generation context runs now (the pool's share); ``cancelled`` is looked at before each
        decode (the client left)."""
        self._require_context()
        if self.embedder is None:
            self.embedder = Embedder(self.model, self.vocab, self.n_ctx,
                                     lambda text: self.tokenize(text, special=True, add_bos=True))
        return self.embedder.run(request, int(L.llama_n_threads(self.ctx)), cancelled)

    def _close_embedder(self) -> None:
        if self.embedder is not None:
            self.embedder.close()
            self.embedder = None

    # -- the pool's share of the cores ----------------------------------------------------------------
    def set_threads(self, threads: int, cores: list[int]) -> None:
        """Record the share (on the reader thread): one assignment, read by the main thread between steps.
        No threads means paused: the pool has more generating workers than cores, and this one waits its turn."""
        with self.share_changed:
            self.threads_wanted = (max(0, threads), tuple(cores))
            self.share_changed.notify_all()

    def wake(self) -> None:
        """A Cancel arrived (reader thread): a paused generation looks at it now, not at its next turn."""
        with self.share_changed:
            self.share_changed.notify_all()

    def _apply_threads(self, cancelled: Callable[[], bool] | None = None) -> bool:
        """Before a decode step: run on the share's number of threads, all of this process's threads on its
        cores (llama.cpp's and OpenMP's included: they are threads of this process, ``/proc/self/task``).
        Paused (no threads), wait for the turn — or until ``cancelled``: then False, and the caller acts on it."""
        if self.threads_wanted is None or self.threads_wanted is self.threads_applied:
            return True
        with self.share_changed:
            while self.threads_wanted is not None and self.threads_wanted[0] == 0:
                if cancelled is not None and cancelled():
                    return False
                self.share_changed.wait()
            wanted = self.threads_wanted
        if wanted is None or wanted is self.threads_applied:
            return True
        threads, cores = wanted
        L.llama_set_n_threads(self.ctx, threads, threads)
        if cores and hasattr(os, "sched_setaffinity"):
            for tid in os.listdir("/proc/self/task"):
                with contextlib.suppress(OSError):  # a thread may end meanwhile
                    os.sched_setaffinity(int(tid), cores)
        self.threads_applied = wanted
        return True

    # -- tokens -------------------------------------------------------------------------------------
    @property
    def concurrent_tokens(self) -> bool:
        """``tokenize``/``detokenize`` may run on another thread beside ``generate`` once a vocabulary is
        loaded: llama.cpp's tokenizer only reads the vocabulary (its per-call state lives in a session
        object; the piece cache is built at load), and these wrappers allocate their own buffers —
        unlike ``_piece``, whose shared ``piece_buf`` only the generating thread uses."""
        return self.vocab is not None

    def tokenize(self, text: str, special: bool = True, add_bos: bool = False) -> list[int]:
        raw = text.encode("utf-8")
        capacity = len(raw) + 8
        buf = (L.llama_token * capacity)()
        n = L.llama_tokenize(self.vocab, raw, len(raw), buf, capacity, add_bos, special)
        if n < 0:
            capacity = -n
            buf = (L.llama_token * capacity)()
            n = L.llama_tokenize(self.vocab, raw, len(raw), buf, capacity, add_bos, special)
        return list(buf[:n])

    def detokenize(self, ids: list[int]) -> str:
        n_vocab = L.llama_vocab_n_tokens(self.vocab)
        bad = [i for i in ids if not 0 <= i < n_vocab]
        if bad:
            raise InvalidRequest(f"token id {bad[0]} is outside the vocabulary [0, {n_vocab})")
        arr = (L.llama_token * max(1, len(ids)))(*ids)
        capacity = 16 * len(ids) + 16
        out = ctypes.create_string_buffer(capacity)
        n = L.llama_detokenize(self.vocab, arr, len(ids), out, capacity, False, True)
        if n < 0:
            out = ctypes.create_string_buffer(-n)
            n = L.llama_detokenize(self.vocab, arr, len(ids), out, -n, False, True)
        return out.raw[:n].decode("utf-8", "replace")

    def _piece(self, token: int, special: bool = False) -> bytes:
        """The token's text; a special token's (``<|im_end|>``) only with ``special`` (``render_special``)."""
        n = L.llama_token_to_piece(self.vocab, token, self.piece_buf, 256, 0, special)
        if n < 0:
            big = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self.vocab, token, big, -n, 0, special)
            return big.raw[:n]
        return self.piece_buf.raw[:n]

    # -- sampling -----------------------------------------------------------------------------------
    def _sampler(self, params: GenerationParams, seed: int, history: Sequence[int] = ()) -> Any:
        """The sampler chain for ``params`` (``warren/worker/samplers.py``): one chain, or a ``GuardedSampler``
        when there is a grammar. ``history``: the prompt, which the repetition penalty and DRY look back over."""
        n_vocab = L.llama_vocab_n_tokens(self.vocab)
        biases = dict(params.logit_bias)
        outside = [t for t in biases if not 0 <= t < n_vocab]
        if outside:
            raise InvalidRequest(f"logit_bias token id {outside[0]} is outside the vocabulary [0, {n_vocab})",
                                 param="logit_bias")
        outside = [t for t in params.token_bans if not 0 <= t < n_vocab]
        if outside:
            raise InvalidRequest(f"custom_token_bans token id {outside[0]} is outside the vocabulary [0, {n_vocab})",
                                 param="custom_token_bans")
        biases.update({t: float("-inf") for t in params.token_bans})
        gbnf = self._grammar(params)  # checked (and maybe refused) before anything is allocated
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        add = L.llama_sampler_chain_add
        if params.ban_eos:
            if not self.eog_tokens:
                self.eog_tokens = [t for t in range(n_vocab) if L.llama_vocab_is_eog(self.vocab, t)]
            biases.update({t: float("-inf") for t in self.eog_tokens})
        for text in params.banned_strings:
            for variant in (text, " " + text):
                ids = self.tokenize(variant, special=False)
                if len(ids) == 1:
                    biases[ids[0]] = float("-inf")
        biases = {t: b for t, b in biases.items() if 0 <= t < n_vocab}
        guarded = None
        post = chain
        if gbnf:
            grammar = L.llama_sampler_init_grammar(self.vocab, gbnf.encode("utf-8"), b"root")
            if not grammar:
                L.llama_sampler_free(chain)
                raise GrammarRejected("llama.cpp could not use the grammar (its log is in the worker's stderr)",
                                      param="grammar")
            post = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
            guarded = GuardedSampler(self.ctx, n_vocab, chain, post)
        # biases, penalties and DRY into ``chain``, the grammar after them, the picking samplers into ``post``
        samplers.build(params, self.vocab, n_vocab, seed, biases, history, chain, post)
        if gbnf:
            add(chain, grammar)
        return guarded or chain

    def _grammar(self, params: GenerationParams) -> str:
        """The request's grammar (its own, or made from its JSON schema), checked against this model."""
        if params.grammar:
            gbnf, param, what = params.grammar, "grammar", "the grammar"
        elif params.json_schema:
            gbnf, param, what = _schema_grammar(params.json_schema), "json_schema", \
                "the grammar made from the JSON schema"
        else:
            return ""
        if self.vocabulary is None:
            self.vocabulary = Vocabulary(self.vocab)
        try:
            check_gbnf(gbnf, self.vocabulary)
        except GrammarRejected as exc:
            raise GrammarRejected(f"{what}: {exc.message}", param=param) from None
        return gbnf

    def _sample_at(self, sampler: Any, index: int, n_new: int) -> int | None:
        """The next token from the logits of batch entry ``index``; None when a grammar is at its end (after
        some output); ``GrammarRejected`` when it allows nothing at all from the start."""
        if not isinstance(sampler, GuardedSampler):
            return int(L.llama_sampler_sample(sampler, self.ctx, index))
        picked = sampler.sample(index)
        if picked is None and not n_new:
            raise GrammarRejected("the grammar, with this request's banned tokens, allows no token to start with",
                                  param="grammar")
        return picked

    @staticmethod
    def _free_sampler(sampler: Any) -> None:
        if sampler is None:
            return
        if isinstance(sampler, GuardedSampler):
            sampler.free()
        else:
            samplers.free(sampler)

    # -- several requests at once (--parallelrequests) --------------------------------------------------
    def batch_runner(self) -> BatchRunner:
        """The sequences of this context stepped together (``warren/worker/batching.py``); made on first use."""
        self._require_context()
        if self.runner is None:
            self.runner = BatchRunner(self, self.parallel)
        return self.runner

    def _close_runner(self) -> None:
        if self.runner is not None:
            self.runner.close()
            self.runner = None

    # -- generation ---------------------------------------------------------------------------------
    def _prepare_prompt(self, params: GenerationParams) -> list[int]:
        add_bos = params.add_bos and bool(L.llama_vocab_get_add_bos(self.vocab))
        tokens = self.tokenize(params.prompt, special=True, add_bos=add_bos)
        if not tokens:
            bos = L.llama_vocab_bos(self.vocab)
            tokens = [bos if bos >= 0 else 0]  # an empty prompt still needs one token to sample after
        window = min(params.context_limit or self.n_ctx, self.n_ctx)
        if params.truncate_prompt and len(tokens) + params.max_tokens > window:
            # As KoboldCpp: the memory (and BOS) stay, then the end of the prompt, the newest story text; the
            # oldest story text goes. The cut is then a ContextShift for the cache (``warren/worker/shift.py``).
            keep = max(1, window - min(params.max_tokens, window // 2))
            head = len(self.tokenize(params.keep_text, special=True, add_bos=add_bos)) if params.keep_text \
                else int(add_bos)
            head = min(head, keep // 2)  # a memory larger than half the window is cut too
            tokens = tokens[:head] + tokens[len(tokens) - (keep - head):]
        elif len(tokens) >= window:
            raise PromptTooLong(f"the prompt is {len(tokens)} tokens, but the context window is {window} tokens",
                                hint="shorten the prompt, or start the model with a larger --contextsize")
        return tokens

    def _decode_prompt(self, tokens: list[int], cancelled: Callable[[], bool]) -> tuple[bool, int]:
        """Decode what the cache lacks of ``tokens``: the shared prefix with the last request is reused.

        ``cancelled`` is asked between batches, so a Cancel (a client gone, an abort, a Park waiting
        behind it) does not wait for a long prompt to be read. (False, …) when it stopped there; the cache
        then holds the batches decoded so far, which the next request's prefix can still reuse. The second
        value: how many prompt tokens were found in the cache."""
        if self.context_shift and (span := shift.dropped_span(self.cached, tokens)) is not None:
            shifted = shift.shift(self.ctx, 0, self.cached, span)
            if shifted is not None:
                self.cached = shifted
        n_keep = min(shift.shared_prefix(self.cached, tokens), len(tokens) - 1)  # the last prompt token must be decoded to get logits
        memory = L.llama_get_memory(self.ctx)
        if not L.llama_memory_seq_rm(memory, 0, n_keep, -1):
            L.llama_memory_clear(memory, True)
            n_keep = 0
        self.cached = tokens[:n_keep]
        for start in range(n_keep, len(tokens), self.n_batch):
            self._apply_threads(cancelled)
            if cancelled():
                return False, n_keep
            chunk = tokens[start : start + self.n_batch]
            arr = (L.llama_token * len(chunk))(*chunk)
            rc = L.llama_decode(self.ctx, L.llama_batch_get_one(arr, len(chunk)))
            if rc != 0:
                L.llama_memory_clear(memory, True)
                self.cached = []
                raise WarrenError(f"llama_decode failed on the prompt (code {rc})")
            self.cached.extend(chunk)
        return True, n_keep

    def generate(self, params: GenerationParams, emit: Callable[[str], None] | None,
                 cancelled: Callable[[], bool]) -> GenerationResult:
        self._require_context()
        seed = params.seed if params.seed >= 0 else random.getrandbits(31)
        started = time.perf_counter()
        tokens = self._prepare_prompt(params)
        box = [self._sampler(params, seed, tokens)]  # the loop replaces it when it backs up (banned phrases)
        logprobs: list[TokenLogprob] = []
        try:
            read, reused = self._decode_prompt(tokens, cancelled)
            prompt_done = time.perf_counter()
            max_new = min(params.max_tokens, min(params.context_limit or self.n_ctx, self.n_ctx) - len(tokens))
            if read:
                reason, n_new, text = self._token_loop(box, params, seed, tokens, max_new, emit, cancelled, logprobs)
            else:
                reason, n_new, text = FinishReason.ABORT, 0, ""
        finally:
            self._free_sampler(box[0])
        return GenerationResult(text=text, finish_reason=reason, prompt_tokens=len(tokens),
                                completion_tokens=n_new, prompt_seconds=prompt_done - started,
                                generation_seconds=time.perf_counter() - prompt_done, seed=seed,
                                cached_tokens=reused, logprobs=tuple(logprobs))

    def _token_loop(self, box: list[Any], params: GenerationParams, seed: int, prompt: list[int], max_new: int,
                    emit: Callable[[str], None] | None, cancelled: Callable[[], bool], logprobs: list[TokenLogprob]
                    ) -> tuple[FinishReason, int, str]:
        """Sample, show, decode, token by token. With banned phrases (``warren/worker/antislop.py``) a phrase that
        completes sends the loop back to the token where it began, that token banned there."""
        ctx, vocab, one, cached = self.ctx, self.vocab, self.one_token, self.cached
        sample, is_eog, decode, batch_one = L.llama_sampler_sample, L.llama_vocab_is_eog, L.llama_decode, \
            L.llama_batch_get_one
        sampler = box[0]
        guarded = sampler if isinstance(sampler, GuardedSampler) else None
        utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        stops = StopMatcher(params.stop, params.trim_stop)
        guard = PhraseGuard(params.banned_strings)
        reader = LogprobReader(ctx, L.llama_vocab_n_tokens(vocab), params.top_logprobs, self._piece) \
            if params.logprobs else None
        made: list[int] = []  # the tokens generated so far
        bans: dict[int, set[int]] = {}  # position in ``made`` -> tokens banned there (banned phrases' starts)
        rewinds = 0
        reason = FinishReason.LENGTH
        while len(made) < max_new:
            if cancelled():
                reason = FinishReason.ABORT
                break
            if reader is not None:
                reader.read(-1)
            if bans and (banned := bans.get(len(made))):
                logits = L.llama_get_logits_ith(ctx, -1)
                for t in banned:
                    logits[t] = float("-inf")
            if guarded is None:
                token = sample(sampler, ctx, -1)
            elif (picked := guarded.sample()) is not None:
                token = picked
            elif made:  # the grammar (with this request's bans) allows no further token: done
                reason = FinishReason.STOP
                break
            else:
                raise GrammarRejected("the grammar, with this request's banned tokens, allows no token to "
                                      "start with", param="grammar")
            if is_eog(vocab, token) and not params.bypass_eos:
                reason = FinishReason.STOP
                break
            made.append(token)
            if reader is not None:
                logprobs.append(reader.entry(token))
            if guard:
                state = utf8.getstate()
                safe, hit = guard.push(utf8.decode(self._piece(token, params.render_special)), state)
                if hit is not None:
                    banned_token = made[hit]
                    utf8.setstate(guard.rewind(hit))
                    del made[hit:], logprobs[hit:]
                    if rewinds == MAX_REWINDS:  # the model keeps finding its way back: end before the phrase
                        reason = FinishReason.STOP
                        break
                    rewinds += 1
                    bans = {i: b for i, b in bans.items() if i <= hit}
                    bans.setdefault(hit, set()).add(banned_token)
                    sampler = self._back_up(box, params, seed, prompt, made)
                    guarded = sampler if isinstance(sampler, GuardedSampler) else None
                    continue
                shown = stops.feed(safe)
            else:
                shown = stops.feed(utf8.decode(self._piece(token, params.render_special)))
            if shown and emit is not None:
                emit(shown)
            if stops.stopped:
                reason = FinishReason.STOP_SEQUENCE
                break
            if len(made) == max_new:
                break  # no need to decode a token nothing will follow
            if self.threads_wanted is not self.threads_applied:
                self._apply_threads(cancelled)
            one[0] = token
            rc = decode(ctx, batch_one(one, 1))
            if rc != 0:
                raise WarrenError(f"llama_decode failed while generating (code {rc})")
            cached.append(token)
        tail = utf8.decode(b"", True)
        if guard:
            tail = guard.flush(tail)
        tail = stops.feed(tail) + stops.flush()
        if tail and emit is not None:
            emit(tail)
        return reason, len(made), stops.text

    def _back_up(self, box: list[Any], params: GenerationParams, seed: int, prompt: list[int],
                 made: list[int]) -> Any:
        """Back to the step after ``prompt + made``: the cache loses what follows, the last kept token is decoded
        again for its logits, and a fresh sampler chain takes the kept tokens (penalties, DRY, grammar state)."""
        cached = self.cached
        keep = len(prompt) + len(made) - 1
        if not L.llama_memory_seq_rm(L.llama_get_memory(self.ctx), 0, keep, -1):
            raise WarrenError("llama.cpp could not drop a banned phrase from the cache")
        del cached[keep:]
        self.one_token[0] = last = made[-1] if made else prompt[-1]
        rc = L.llama_decode(self.ctx, L.llama_batch_get_one(self.one_token, 1))
        if rc != 0:
            raise WarrenError(f"llama_decode failed while backing up (code {rc})")
        cached.append(last)
        self._free_sampler(box[0])
        box[0] = None  # (freed: a failure below must not free it twice)
        sampler = self._sampler(params, seed, prompt)
        box[0] = sampler
        for token in made:
            if isinstance(sampler, GuardedSampler):
                L.llama_sampler_accept(sampler.pre, token)
                L.llama_sampler_accept(sampler.post, token)
            else:
                L.llama_sampler_accept(sampler, token)
        return sampler
