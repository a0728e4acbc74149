"""The memory estimate from the header: its parts follow the model's shape and the settings."""

from __future__ import annotations

from pathlib import Path

from warren.gguf.estimate import estimate_memory, kv_cache_bytes
from warren.gguf.reader import read_gguf


def test_kv_cache_is_layers_times_context_times_kv_width(model_path: Path) -> None:
    info = read_gguf(model_path)
    # SmolLM2-135M: 30 layers, 3 KV heads of 64 for K and for V, f16.
    assert kv_cache_bytes(info, 2048) == 30 * 2048 * (3 * 64 * 2) * 2
    assert kv_cache_bytes(info, 4096, quant_kv=1) < kv_cache_bytes(info, 4096, quant_kv=0)


def test_parts_and_total(model_path: Path) -> None:
    info = read_gguf(model_path)
    small = estimate_memory(info, context_size=512)
    large = estimate_memory(info, context_size=8192)
    assert small.weights == large.weights == info.tensor_bytes
    assert large.kv_cache == 16 * small.kv_cache
    # Without flash attention the attention scores grow with the context; with it they are not kept.
    assert estimate_memory(info, context_size=8192, flash_attention=False).compute > large.compute
    assert large.compute == small.compute
    assert large.total == large.weights + large.kv_cache + large.compute + large.worker_base
    assert set(large.as_dict()) == {"weights", "kv_cache", "compute", "worker_base", "parked", "total"}
    assert large.worker_base < large.parked < large.total
