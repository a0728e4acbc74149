"""Memory estimate for one loaded model, from its GGUF header alone (no llama_cpp import).

The pool reserves this figure before a worker starts, so it must be computable in microseconds and
close to what the worker will really hold: its **resident** footprint (PSS), which is what the pool
measures afterwards and what runs a machine out of memory. It is reported in parts, because "why is
this model 3 GB?" is answered by the parts, not the sum. Each part follows llama.cpp's own sizing
(the vendored llama.cpp of llama-cpp-python 0.3.36: ``llama-context.cpp``, ``llama-kv-cache*.cpp``),
and what is not a size llama.cpp computes is fitted on two architectures, SmolLM2-135M (Llama, 49k
vocabulary, BPE) and Gemma 3 270M (sliding windows, 262k vocabulary, SentencePiece), against PSS measured
after a 400-token prompt and 100 generated tokens (``benchmarks/bench_estimate.py``):

- ``weights``: the tensor bytes in the file (mapped, and all touched by inference).
- ``kv_cache``: per layer, cells × (K width + V width) × bytes per element of the cache type, as
  ``warren/gguf/attention.py`` lays the layers out. llama.cpp pads the context to 256 cells. Layers with a
  sliding window get a cache of their own that holds the window of each sequence plus one micro-batch
  (padded to 256) — unless the cache is full-size (``swa_full``), which is llama.cpp's default and what
  the worker uses: its prompt-prefix reuse needs the whole history in every layer. ``window_saving`` says
  what the window-sized cache saves (or would save). llama.cpp clears the cache at start, so all of it is
  resident.
- ``compute``: what of llama.cpp's compute and output buffers becomes resident. The compute buffer is
  *allocated* for the worst micro-batch, logits for every token included (512 MiB for Gemma's 262k
  vocabulary), but the worker asks for the logits of the last token of each sequence only, so what is
  touched is one micro-batch of activations (∝ micro-batch × layer widths), the attention mask (∝
  micro-batch × context), and per sequence one row of logits, its copy in the output buffer and the
  sampler's candidates (∝ vocabulary). Without flash attention the attention scores of one layer add
  micro-batch × context × heads floats.
- ``vocabulary``: llama.cpp's tokenizer tables (token texts, the text-to-id map, the piece cache; BPE
  merges in a map of their own), per token and per merge rule.
- ``worker_base``: an idle worker process with Python and llama-cpp-python imported, measured.

``parked`` is not part of the total: it is what a *parked* instance keeps (``warren/pool/policy.py``),
its worker base and tokenizer tables, with no context and the weights' pages unmapped. Measured here
for the default model: 54 MiB PSS parked, against 196 MiB loaded at a 2048-token context.

``parallel`` sequences share one unified KV cache sized by the context (their tokens together fill it),
so the full-attention layers do not grow with them; each sequence's window does, and so do the logits,
output rows and samplers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from warren import flash_attention
from warren.gguf.attention import AttentionLayout, attention_layout
from warren.gguf.reader import GGUFInfo
from warren.settings import ModelSettings

MIB = 1024 * 1024

# Bytes per KV-cache element for KoboldCpp's --quantkv choices: 0 = f16, 1 = q8_0, 2 = q4_0.
KV_BYTES_PER_ELEMENT = {0: 2.0, 1: 34 / 32, 2: 18 / 32}

# PSS of a worker that has imported llama_cpp and loaded nothing: measured 34.3 MiB here (Python 3.11,
# llama-cpp-python 0.3.36), plus room for the serving state the worker builds once loaded.
WORKER_BASE_BYTES = 36 * MIB

# Tokenizer tables, fitted: Gemma 3's 262,144 SentencePiece tokens take 41.6 MiB (166 B each); SmolLM2's
# 49,152 tokens and 48,900 BPE merges take 16.7 MiB, the merges 191 B each.
TOKEN_BYTES = 168
MERGE_BYTES = 192

# Per sequence and vocabulary entry: its logit in the compute buffer and in the output buffer (f32 each),
# and the sampler's candidate (id, logit, p).
OUTPUT_BYTES_PER_TOKEN = 4 + 4 + 12
# Activations of one micro-batch token, in f32 values per (embedding + FFN + query width): fitted, 2.3
# (SmolLM2) and 2.7 (Gemma 3) measured.
ACTIVATION_FACTOR = 2.5
# Graph, scheduler and context bookkeeping that does not grow with the model.
COMPUTE_FIXED_BYTES = 3 * MIB // 2

# llama.cpp pads the context, and a window-sized cache, to this many cells.
CELL_PAD = 256
# llama.cpp splits a batch into micro-batches of at most this many tokens (its n_ubatch default).
DEFAULT_UBATCH = 512
# The worker keeps llama.cpp's default full-size cache for sliding-window layers (see the docstring).
SWA_FULL = True


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    compute: int
    worker_base: int
    parked: int = 0  # resident while parked; not part of ``total``
    vocabulary: int = 0
    window_saving: int = 0  # what window-sized caches for sliding layers save against full ones; not in ``total``

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.vocabulary + self.worker_base

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def _pad(n: int, to: int = CELL_PAD) -> int:
    return (n + to - 1) // to * to


def micro_batch(context_size: int, batch_size: int) -> int:
    """The worker's n_ubatch as llama.cpp clamps it (batch ≤ context; -1 = KoboldCpp's "no big batches")."""
    batch = batch_size if batch_size > 0 else 16
    return max(1, min(batch, DEFAULT_UBATCH, _pad(context_size)))


def kv_cells(layout: AttentionLayout, context_size: int, *, ubatch: int = DEFAULT_UBATCH, parallel: int = 1,
             swa_full: bool = SWA_FULL) -> tuple[int, int]:
    """Cells of the full-attention cache and of the sliding-window cache (llama_kv_cache_iswa): a window
    per sequence plus one micro-batch, padded, never more than the context."""
    full = _pad(context_size)
    if swa_full or not layout.window:
        return full, full
    return full, _pad(min(full, layout.window * max(1, parallel) + ubatch))


def kv_cache_bytes(info: GGUFInfo, context_size: int, quant_kv: int = 0, *, quant_v: int | None = None,
                   batch_size: int = DEFAULT_UBATCH, parallel: int = 1, swa_full: bool = SWA_FULL) -> int:
    """``quant_v``: the V cache's type when it differs from K's (the worker quantises V only with flash
    attention forced on)."""
    layout = attention_layout(info)
    full, window = kv_cells(layout, context_size, ubatch=micro_batch(context_size, batch_size), parallel=parallel,
                            swa_full=swa_full)
    k = sum((window if layer.sliding else full) * layer.k_width for layer in layout.layers)
    v = sum((window if layer.sliding else full) * layer.v_width for layer in layout.layers)
    v_type = quant_kv if quant_v is None else quant_v
    return int(k * KV_BYTES_PER_ELEMENT[quant_kv] + v * KV_BYTES_PER_ELEMENT[v_type])


def vocabulary_bytes(info: GGUFInfo) -> int:
    return info.vocab_size * TOKEN_BYTES + info.merge_count * MERGE_BYTES


def compute_bytes(info: GGUFInfo, context_size: int, batch_size: int, flash_attention: bool,
                  parallel: int = 1, swa_full: bool = SWA_FULL) -> int:
    """The resident part of llama.cpp's compute and output buffers (see the module docstring)."""
    ubatch = micro_batch(context_size, batch_size)
    layout = attention_layout(info)
    full, window = kv_cells(layout, context_size, ubatch=ubatch, parallel=parallel, swa_full=swa_full)
    heads = max(info.per_layer("attention.head_count") or (info.head_count,))
    width = info.embedding_length + (info.feed_forward_length or 4 * info.embedding_length) + heads * info.key_length
    activations = int(ACTIVATION_FACTOR * ubatch * width * 4)
    outputs = max(1, parallel) * info.vocab_size * OUTPUT_BYTES_PER_TOKEN
    # One mask per kind of layer, [cells, micro-batch]: f16 with flash attention, f32 without.
    masked = full + (window if layout.window else 0)
    mask = ubatch * masked * (2 if flash_attention else 4)
    scores = 0 if flash_attention else ubatch * full * heads * 4
    return COMPUTE_FIXED_BYTES + activations + outputs + mask + scores


def estimate_memory(info: GGUFInfo, *, context_size: int, batch_size: int = 512, quant_kv: int = 0,
                    quant_v: int | None = None, flash_attention: bool = True, parallel: int = 1,
                    swa_full: bool = SWA_FULL) -> MemoryEstimate:
    """``flash_attention`` defaults to on: warren leaves it to llama.cpp's "auto", which enables it on
    CPU builds.

    ``parallel``: sequences served at once (``--parallelrequests``), as llama.cpp's ``n_seq_max`` with
    ``kv_unified``: they share one KV cache of ``context_size`` cells, so the KV cache does not grow with
    them (nor with a full-size sliding-window cache, the worker's); only a window-sized sliding cache
    keeps one window per sequence. What grows is ``compute``: each sequence's row of logits, its copy in
    the output buffer and its sampler's candidates, ``vocabulary × OUTPUT_BYTES_PER_TOKEN`` each (5 MiB
    for Gemma 3's 262k vocabulary, 1 MiB for SmolLM2's 49k). Weights, tokenizer tables and the worker
    base are shared by all sequences."""
    def kv(full_size: bool) -> int:
        return kv_cache_bytes(info, context_size, quant_kv, quant_v=quant_v, batch_size=batch_size,
                              parallel=parallel, swa_full=full_size)

    vocabulary = vocabulary_bytes(info)
    return MemoryEstimate(
        weights=info.tensor_bytes,
        kv_cache=kv(swa_full),
        compute=compute_bytes(info, context_size, batch_size, flash_attention, parallel, swa_full),
        worker_base=WORKER_BASE_BYTES,
        parked=WORKER_BASE_BYTES + vocabulary,
        vocabulary=vocabulary,
        window_saving=kv(True) - kv(False),
    )


def estimate_args(settings: ModelSettings) -> dict[str, Any]:
    """``estimate_memory``'s settings for a worker loaded with ``settings``, as the worker creates its
    context (``warren/worker/engine.py``): V is quantised only with flash attention forced on; whether it
    runs with flash attention at all (which changes the compute buffer) is forced, or measured on this CPU
    (``warren/flash_attention.py``)."""
    return {"context_size": settings.context_size, "batch_size": settings.batch_size, "quant_kv": settings.quant_kv,
            "quant_v": settings.quant_kv if settings.flash_attention == "on" else 0, "parallel": settings.parallel,
            "flash_attention": flash_attention.expected(settings)}
