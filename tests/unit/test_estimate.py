"""The memory estimate from the header: its parts follow the model's architecture and the settings, on two
real architectures (SmolLM2: Llama, every layer full; Gemma 3: 5 of 6 layers on a 512-token window) and on
small files written here for what neither has (per-layer head counts, a stored layer pattern)."""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

from warren.gguf.attention import attention_layout, sliding_layers
from warren.gguf.estimate import (
    MIB,
    OUTPUT_BYTES_PER_TOKEN,
    TOKEN_BYTES,
    estimate_memory,
    kv_cache_bytes,
)
from warren.gguf.reader import read_gguf

F16 = 2


def test_smollm2_kv_cache_is_layers_times_context_times_kv_width(model_path: Path) -> None:
    info = read_gguf(model_path)
    # SmolLM2-135M: 30 layers, 3 KV heads of 64 for K and for V, f16.
    assert kv_cache_bytes(info, 2048) == 30 * 2048 * (3 * 64 * 2) * F16
    assert kv_cache_bytes(info, 4096, quant_kv=1) < kv_cache_bytes(info, 4096, quant_kv=0)
    # llama.cpp pads the context to 256 cells.
    assert kv_cache_bytes(info, 1000) == kv_cache_bytes(info, 1024)
    # V stays f16 when only K is quantised (the worker without --flashattention).
    assert kv_cache_bytes(info, 2048, quant_kv=1) < kv_cache_bytes(info, 2048, quant_kv=1, quant_v=0) \
        < kv_cache_bytes(info, 2048)


def test_smollm2_has_no_sliding_layers(model_path: Path) -> None:
    info = read_gguf(model_path)
    layout = attention_layout(info)
    assert layout.window == 0 and layout.sliding_layers == 0
    est = estimate_memory(info, context_size=8192, swa_full=False)
    assert est.window_saving == 0 and est.kv_cache == estimate_memory(info, context_size=8192).kv_cache


def test_gemma3_layers_slide_five_in_six(gemma_path: Path) -> None:
    info = read_gguf(gemma_path)
    layout = attention_layout(info)
    assert info.architecture == "gemma3" and info.block_count == 18 and layout.window == 512
    # llama.cpp's Gemma 3 default: every 6th layer (5, 11, 17) attends to everything.
    assert [il for il, layer in enumerate(layout.layers) if not layer.sliding] == [5, 11, 17]
    assert {(layer.k_width, layer.v_width) for layer in layout.layers} == {(256, 256)}  # 1 KV head of 256


def test_gemma3_sliding_cache_holds_a_window_and_a_micro_batch(gemma_path: Path) -> None:
    info = read_gguf(gemma_path)
    per_cell = 512 * F16  # K + V widths
    # Full-size caches (llama.cpp's default, the worker's): every layer holds the context.
    assert kv_cache_bytes(info, 4096) == 18 * 4096 * per_cell
    # Window-sized: 3 full layers hold the context, 15 hold 512 + one micro-batch of 512 cells.
    windowed = 3 * 4096 * per_cell + 15 * 1024 * per_cell
    assert kv_cache_bytes(info, 4096, swa_full=False) == windowed
    # ... never more than the context, padded to 256.
    assert kv_cache_bytes(info, 1000, swa_full=False) == 18 * 1024 * per_cell
    # A smaller micro-batch leaves fewer extra cells: 512 + 64, padded to 768.
    assert kv_cache_bytes(info, 4096, batch_size=64, swa_full=False) == 3 * 4096 * per_cell + 15 * 768 * per_cell
    est = estimate_memory(info, context_size=4096)
    assert est.kv_cache == 18 * 4096 * per_cell and est.window_saving == 18 * 4096 * per_cell - windowed


def test_parallel_sequences_share_the_context_but_each_keeps_a_window(gemma_path: Path) -> None:
    info = read_gguf(gemma_path)
    per_cell = 512 * F16
    # Unified cache: the full layers stay at the context; each of 4 sequences keeps its own window.
    assert kv_cache_bytes(info, 8192, parallel=4, swa_full=False) == 3 * 8192 * per_cell + 15 * 2560 * per_cell
    assert kv_cache_bytes(info, 8192, parallel=4) == kv_cache_bytes(info, 8192)
    one = estimate_memory(info, context_size=8192)
    four = estimate_memory(info, context_size=8192, parallel=4)
    # Each sequence adds a row of logits, its copy in the output buffer and its sampler's candidates.
    assert four.compute - one.compute == 3 * info.vocab_size * OUTPUT_BYTES_PER_TOKEN
    assert four.weights == one.weights and four.vocabulary == one.vocabulary


def test_compute_follows_batch_context_and_attention_kind(model_path: Path, gemma_path: Path) -> None:
    for info in (read_gguf(model_path), read_gguf(gemma_path)):
        est = estimate_memory(info, context_size=8192)
        # A smaller micro-batch touches fewer activations and a smaller attention mask.
        assert estimate_memory(info, context_size=8192, batch_size=64).compute < est.compute
        # Without flash attention one layer's scores are held: micro-batch × context × heads floats.
        no_fa = estimate_memory(info, context_size=8192, flash_attention=False).compute
        assert no_fa - est.compute > 512 * 8192 * info.head_count * 4
        # The mask grows with the context; the rest does not.
        assert 0 < est.compute - estimate_memory(info, context_size=2048).compute < 16 * MIB


def test_parts_and_total(model_path: Path, gemma_path: Path) -> None:
    for path in (model_path, gemma_path):
        info = read_gguf(path)
        small = estimate_memory(info, context_size=512)
        large = estimate_memory(info, context_size=8192)
        assert small.weights == large.weights == info.tensor_bytes
        assert large.kv_cache == 16 * small.kv_cache
        assert large.vocabulary == info.vocab_size * TOKEN_BYTES + info.merge_count * 192
        assert large.total == large.weights + large.kv_cache + large.compute + large.vocabulary + large.worker_base
        assert set(large.as_dict()) == {"weights", "kv_cache", "compute", "vocabulary", "worker_base", "parked",
                                        "window_saving", "total"}
        assert large.parked == large.worker_base + large.vocabulary < large.total
    # BPE merges cost table memory as tokens do: SmolLM2 has 48,900 of them, Gemma none.
    assert read_gguf(model_path).merge_count == 48900 and read_gguf(gemma_path).merge_count == 0


def write_model(path: Path, arch: str, layers: int, **keys: object) -> Path:
    """A header with just what the estimate reads; ``keys`` are ``{arch}.`` keys (lists become arrays)."""
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(layers)
    w.add_context_length(4096)
    w.add_embedding_length(256)
    w.add_feed_forward_length(512)
    w.add_head_count(4)
    for key, value in keys.items():
        full = f"{arch}.{key}"
        if isinstance(value, list):
            w.add_array(full, value)
        elif isinstance(value, bool):
            w.add_bool(full, value)
        else:
            w.add_uint32(full, int(value))  # type: ignore[call-overload]
    w.add_token_list([f"t{i}" for i in range(100)])
    w.add_tensor("blk.0.w", np.ones(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_per_layer_kv_heads_from_an_array(tmp_path: Path) -> None:
    # A hybrid model: layers with 0 KV heads (recurrent ones) have no KV cache; the others their own count.
    heads = [0, 2, 0, 4] * 20  # 80 layers: longer than the reader's short-array limit for strings
    info = read_gguf(write_model(tmp_path / "h.gguf", "llama", 80, **{"attention.head_count_kv": heads,
                                                                        "attention.key_length": 64,
                                                                        "attention.value_length": 32}))
    assert info.per_layer("attention.head_count_kv") == tuple(heads)
    assert kv_cache_bytes(info, 1024) == sum(heads) * (64 + 32) * 1024 * F16


def test_sliding_pattern_stored_in_the_file_wins(tmp_path: Path) -> None:
    pattern = [True, False, True, True]
    info = read_gguf(write_model(tmp_path / "p.gguf", "gemma3", 4, **{"attention.sliding_window": 128,
                                                                      "attention.sliding_window_pattern": pattern,
                                                                      "attention.key_length_swa": 32}))
    assert sliding_layers(info) == tuple(pattern)
    layout = attention_layout(info)
    assert [layer.k_width for layer in layout.layers] == [4 * 32, 4 * 64, 4 * 32, 4 * 32]  # 4 heads, 256 / 4
    # A stored period instead of the architecture's: every 2nd layer full.
    info = read_gguf(write_model(tmp_path / "n.gguf", "gemma3", 4, **{"attention.sliding_window": 128,
                                                                      "attention.sliding_window_pattern": 2}))
    assert sliding_layers(info) == (True, False, True, False)
    # No window key: Gemma 3 without one is full attention everywhere, as llama.cpp reads it.
    info = read_gguf(write_model(tmp_path / "f.gguf", "gemma3", 4))
    assert sliding_layers(info) == (False,) * 4 and attention_layout(info).window == 0
    # A window on an architecture llama.cpp does not slide (Llama) is ignored.
    info = read_gguf(write_model(tmp_path / "l.gguf", "llama", 4, **{"attention.sliding_window": 128}))
    assert sliding_layers(info) == (False,) * 4
