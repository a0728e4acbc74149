"""Memory estimate for one loaded model, from its GGUF header alone (no llama_cpp import).

The pool reserves this figure before a worker starts, so it must be computable in microseconds and
must not under-count by much. It is reported in parts, because "why is this model 3 GB?" is answered
by the parts, not the sum:

- ``weights``: the tensor bytes in the file (all of them are resident on a CPU build; mmap'd pages
  count too, since inference touches them all).
- ``kv_cache``: layers × context × (K width + V width) × bytes per element of the cache type.
- ``compute``: llama.cpp's scratch buffers; they scale with the micro-batch and, without flash
  attention, with batch × context × heads (the attention scores). Checked against what llama.cpp
  reports for its CPU compute buffer (see ``estimate_memory``).
- ``worker_base``: an idle worker process with Python and llama-cpp-python imported, measured.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from warren.gguf.reader import GGUFInfo

MIB = 1024 * 1024

# Bytes per KV-cache element for KoboldCpp's --quantkv choices: 0 = f16, 1 = q8_0, 2 = q4_0.
KV_BYTES_PER_ELEMENT = {0: 2.0, 1: 34 / 32, 2: 18 / 32}

# RSS of a worker that has imported llama_cpp and loaded nothing: measured 42.6 MiB here (Python 3.11,
# llama-cpp-python 0.3.36); the rest is headroom for its serving state.
WORKER_BASE_BYTES = 48 * MIB

# llama.cpp splits a batch into micro-batches of at most this many tokens (its n_ubatch default).
DEFAULT_UBATCH = 512


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    weights: int
    kv_cache: int
    compute: int
    worker_base: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.worker_base

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total}


def kv_cache_bytes(info: GGUFInfo, context_size: int, quant_kv: int = 0) -> int:
    width = info.head_count_kv * (info.key_length + info.value_length)
    return int(info.block_count * context_size * width * KV_BYTES_PER_ELEMENT[quant_kv])


def compute_bytes(info: GGUFInfo, context_size: int, batch_size: int, flash_attention: bool) -> int:
    """llama.cpp's CPU compute buffer: logits for one micro-batch, activations, attention scores."""
    ubatch = max(1, min(batch_size if batch_size > 0 else DEFAULT_UBATCH, DEFAULT_UBATCH, context_size))
    logits = info.vocab_size * ubatch * 4
    activations = 6 * ubatch * max(info.embedding_length, 1) * 4
    scores = 0 if flash_attention else ubatch * context_size * max(info.head_count, 1) * 4
    return logits + activations + scores


def estimate_memory(info: GGUFInfo, *, context_size: int, batch_size: int = 512, quant_kv: int = 0,
                    flash_attention: bool = True) -> MemoryEstimate:
    """``flash_attention`` defaults to on: warren leaves it to llama.cpp's "auto", which enables it on
    CPU builds. Measured for SmolLM2-135M at contexts 512/2048/8192, llama.cpp reports a CPU compute
    buffer of 98.3/102.5/98.3 MiB; this formula gives 102.8 MiB."""
    return MemoryEstimate(
        weights=info.tensor_bytes,
        kv_cache=kv_cache_bytes(info, context_size, quant_kv),
        compute=compute_bytes(info, context_size, batch_size, flash_attention),
        worker_base=WORKER_BASE_BYTES,
    )
