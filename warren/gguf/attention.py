"""How llama.cpp lays out a model's attention, read from the GGUF header: each layer's K and V widths and
which layers only attend to a sliding window of recent tokens.

Why a module of its own: the KV cache is the part of a model's memory that grows with the context, and
its size is decided per layer. Gemma 3 keeps a 512-token window in 5 of every 6 layers, some models store
one KV-head count per layer (0 for a layer without attention), and sliding layers may have their own
head sizes. The header does not always say which layers slide: llama.cpp's loader for each architecture
knows a default pattern (``load_swa_pattern(ml, 6)`` for Gemma 3), used when the file has no
``attention.sliding_window_pattern`` of its own. ``SLIDING_PATTERNS`` copies those defaults from the
llama.cpp that llama-cpp-python 0.3.36 vendors (``src/models/*.cpp``); an architecture missing from it is
taken as full attention everywhere, which can only overestimate.

Not modelled: recurrent state (Mamba-style layers: their head count is 0 here, so they cost nothing),
multi-head latent attention (DeepSeek's compressed K/V) and layers that share another layer's cache
(Gemma 3n): each is charged as plain attention.
"""

from __future__ import annotations

from dataclasses import dataclass

from warren.gguf.reader import GGUFInfo

# Architecture -> (period, dense_first): one layer in each period attends to everything, the others slide;
# the full one is the first of the period with dense_first, else the last (llama_hparams::set_swa_pattern).
# None: the architecture takes the pattern only from the file's per-layer array.
SLIDING_PATTERNS: dict[str, tuple[int, bool] | None] = {
    "gemma2": (2, False), "gemma3": (6, False), "gemma3n": (5, False), "cohere2": (4, False), "cohere2moe": (4, True),
    "olmo2": (4, False), "gpt-oss": (2, False), "afmoe": (4, False), "mellum": (4, False),
    "muse-glimmer": (4, False), "plamo3": (8, False), "exaone-moe": (4, False), "smallthinker": (4, True),
    "laguna": (4, True), "llama4": (4, False),
    "gemma4": None, "granite_swa": None, "maple": None, "mimo2": None, "spark2_5": None, "step35": None,
    "dots3note": None,
}
# Windows llama.cpp assumes without an ``attention.sliding_window`` key, and those it sets whatever the key
# says (Llama 4's attention chunks, SmallThinker's window).
DEFAULT_WINDOWS = {"gemma2": 4096, "exaone-moe": 128, "llama4": 8192}
FORCED_WINDOWS = {"llama4": 8192, "smallthinker": 4096}


@dataclass(frozen=True, slots=True)
class AttentionLayer:
    k_width: int  # K elements cached per token: KV heads × key head size
    v_width: int
    sliding: bool


@dataclass(frozen=True, slots=True)
class AttentionLayout:
    layers: tuple[AttentionLayer, ...]
    window: int  # tokens a sliding layer attends to; 0 when no layer slides

    @property
    def sliding_layers(self) -> int:
        return sum(1 for layer in self.layers if layer.sliding)


def _window(info: GGUFInfo) -> int:
    arch = info.architecture
    if arch in FORCED_WINDOWS:
        key = info.arch_value("attention.sliding_window")
        return 0 if key == 0 else FORCED_WINDOWS[arch]  # Llama 4 with a 0 window: no chunking
    return int(info.arch_value("attention.sliding_window", DEFAULT_WINDOWS.get(arch, 0)) or 0)


def sliding_layers(info: GGUFInfo) -> tuple[bool, ...]:
    """Which layers slide, as llama.cpp decides: the file's per-layer array if it has one, else its period
    (a number in the file, or the architecture's default)."""
    n = info.block_count
    if info.architecture not in SLIDING_PATTERNS or _window(info) <= 0:
        return (False,) * n
    stored = info.arch_value("attention.sliding_window_pattern")
    if isinstance(stored, list) and len(stored) == n:
        return tuple(bool(v) for v in stored)
    default = SLIDING_PATTERNS[info.architecture]
    if isinstance(stored, int) and not isinstance(stored, bool):
        period, dense_first = stored, bool(default and default[1])
    elif default is not None:
        period, dense_first = default
    else:
        return (False,) * n  # the array is required and missing: llama.cpp would refuse the file
    if period == 0:
        return (True,) * n
    if dense_first:
        return tuple(il % period != 0 for il in range(n))
    return tuple(il % period < period - 1 for il in range(n))


def attention_layout(info: GGUFInfo) -> AttentionLayout:
    heads = info.per_layer("attention.head_count") or (info.head_count,) * info.block_count
    kv_heads = info.per_layer("attention.head_count_kv") or heads
    slides = sliding_layers(info)
    k_full, v_full = info.key_length, info.value_length
    k_swa = int(info.arch_value("attention.key_length_swa", k_full) or k_full)
    v_swa = int(info.arch_value("attention.value_length_swa", v_full) or v_full)
    layers = tuple(
        AttentionLayer(k_width=kv * (k_swa if swa else k_full), v_width=kv * (v_swa if swa else v_full), sliding=swa)
        for kv, swa in zip(kv_heads, slides, strict=True)
    )
    return AttentionLayout(layers, _window(info) if any(slides) else 0)
