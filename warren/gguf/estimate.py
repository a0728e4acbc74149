"""Memory estimate for one loaded model, from its GGUF header alone (no llama_cpp import).

The pool reserves this figure before a worker starts, so it must be computable in microseconds and
close to what the worker will really hold: its **resident** footprint (PSS), which is what the pool
measures afterwards and what runs a machine out of memory. It is reported in parts, because "why is
this model 3 GB?" is answered by the parts, not the sum:

- ``weights``: the tensor bytes in the file (mapped, and all touched by inference).
- ``kv_cache``: layers × context × (K width + V width) × bytes per element of the cache type
  (llama.cpp clears it at start, so all of it is resident).
- ``compute``: what of llama.cpp's scratch buffers and tokenizer tables becomes resident. llama.cpp
  *allocates* a compute buffer sized for a full micro-batch of logits (~100 MiB for a 49k vocabulary)
  but generation writes the logits of one token, so most of it is never touched. Fitted to PSS
  measured after a 400-token prompt and 100 generated tokens (``benchmarks/bench_estimate.py``).
- ``worker_base``: an idle worker process with Python and llama-cpp-python imported, measured.

``parked`` is not part of the total: it is what a *parked* instance keeps (``warren/pool/policy.py``),
its worker base and tokenizer tables, with no context and the weights' pages unmapped. Measured here
for the default model: 54 MiB PSS parked, against 196 MiB loaded at a 2048-token context.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from warren.gguf.reader import GGUFInfo

MIB = 1024 * 1024

# Bytes per KV-cache element for KoboldCpp's --quantkv choices: 0 = f16, 1 = q8_0, 2 = q4_0.
KV_BYTES_PER_ELEMENT = {0: 2.0, 1: 34 / 32, 2: 18 / 32}

# PSS of a worker that has imported llama_cpp and loaded nothing: measured 34.3 MiB here (Python 3.11,
# llama-cpp-python 0.3.36), plus room for the serving state the worker builds once loaded.
WORKER_BASE_BYTES = 36 * MIB

# Resident tokenizer and graph tables per vocabulary entry: fitted on SmolLM2 (49,152 entries).
VOCAB_BYTES_PER_TOKEN = 512

# llama.cpp splits a batch into micro-batches of at most this many tokens (its n_ubatch default).
DEFAULT_UBATCH = 512


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    compute: int
    worker_base: int
    parked: int = 0  # resident while parked; not part of ``total``

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.worker_base

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def kv_cache_bytes(info: GGUFInfo, context_size: int, quant_kv: int = 0) -> int:
    width = info.head_count_kv * (info.key_length + info.value_length)
    return int(info.block_count * context_size * width * KV_BYTES_PER_ELEMENT[quant_kv])


def compute_bytes(info: GGUFInfo, context_size: int, batch_size: int, flash_attention: bool) -> int:
    """The resident part of llama.cpp's compute buffers and tables: activations of one micro-batch,
    the vocabulary tables, and without flash attention the attention scores of one micro-batch."""
    ubatch = max(1, min(batch_size if batch_size > 0 else DEFAULT_UBATCH, DEFAULT_UBATCH, context_size))
    activations = 6 * ubatch * max(info.embedding_length, 1) * 4
    vocabulary = info.vocab_size * VOCAB_BYTES_PER_TOKEN
    scores = 0 if flash_attention else ubatch * context_size * max(info.head_count, 1) * 4
    return activations + vocabulary + scores


def estimate_memory(info: GGUFInfo, *, context_size: int, batch_size: int = 512, quant_kv: int = 0,
                    flash_attention: bool = True) -> MemoryEstimate:
    """``flash_attention`` defaults to on: warren leaves it to llama.cpp's "auto", which enables it on
    CPU builds."""
    return MemoryEstimate(
        weights=info.tensor_bytes,
        kv_cache=kv_cache_bytes(info, context_size, quant_kv),
        compute=compute_bytes(info, context_size, batch_size, flash_attention),
        worker_base=WORKER_BASE_BYTES,
        parked=WORKER_BASE_BYTES + info.vocab_size * VOCAB_BYTES_PER_TOKEN,
    )
