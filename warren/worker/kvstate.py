"""A conversation's KV cache kept across parking: the bytes of each cached sequence, saved before the context
is freed and put back into the next context of the same model.

Why: re-reading a 1,000-token chat costs seconds on a CPU, and a swap to another model and back used to
cost exactly that (the cache died with the context). llama.cpp can copy one sequence's cells out of a
context (``llama_state_seq_get_data``: positions, K and V of every layer; for sliding-window models both
caches) and into another (``llama_state_seq_set_data``). The copy is exact, so a restored cache gives the
same logits as the one saved: greedy output after a swap equals greedy output without one.

What makes a state usable again (``state_key``): the same model file (path, size, modification time), the
same weights' placement, and every context setting that shapes the cells — context size, KV type, flash
attention (V is stored transposed without it), rope, sequences. Anything else is dropped, not restored.
The tokens each sequence holds travel with its bytes; the next prompt is compared with them token by token
(the engine's usual prefix reuse) and only the part that differs is decoded.

This module holds the state; the worker keeps it in its own memory while parked (``engine.park``). Its
size is reported to the pool, which counts it in the parked footprint and may ask for it to be dropped
(``DropState``) when the budget needs the room.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Any

import llama_cpp as L

from warren.settings import ModelSettings


@dataclass(frozen=True, slots=True)
class SavedSequence:
    seq_id: int
    tokens: tuple[int, ...]  # the tokens whose K/V ``data`` holds, in order
    data: bytes


@dataclass(frozen=True, slots=True)
class SavedState:
    key: tuple[Any, ...]  # ``state_key`` of the context it was taken from
    sequences: tuple[SavedSequence, ...]

    @property
    def nbytes(self) -> int:
        return sum(len(s.data) + 4 * len(s.tokens) for s in self.sequences)


def state_key(settings: ModelSettings) -> tuple[Any, ...]:
    """Everything a saved sequence depends on: the model file as it is now, and the context's shape."""
    try:
        st = os.stat(settings.path)
        file = (os.path.realpath(settings.path), st.st_size, st.st_mtime_ns)
    except OSError:
        file = (str(settings.path), -1, -1)
    return (*file, settings.gpu_layers, settings.context_size, settings.quant_kv, settings.flash_attention,
            settings.rope_freq_base, settings.rope_freq_scale, max(1, settings.parallel), settings.batch_size)


def save(ctx: Any, key: tuple[Any, ...], sequences: list[tuple[int, list[int]]], limit: int) -> SavedState | None:
    """Copy the cells of ``sequences`` ((seq_id, tokens) with tokens cached) out of ``ctx``; None when there is
    nothing to keep or it would take more than ``limit`` bytes (negative: no limit)."""
    saved: list[SavedSequence] = []
    total = 0
    for seq_id, tokens in sequences:
        if not tokens:
            continue
        size = int(L.llama_state_seq_get_size(ctx, seq_id))
        total += size + 4 * len(tokens)
        if size <= 0 or 0 <= limit < total:
            return None
        buf = (ctypes.c_uint8 * size)()
        written = int(L.llama_state_seq_get_data(ctx, buf, size, seq_id))
        if written <= 0:
            return None
        saved.append(SavedSequence(seq_id, tuple(tokens), bytes(memoryview(buf)[:written])))
    return SavedState(key, tuple(saved)) if saved else None


def restore(ctx: Any, state: SavedState) -> dict[int, list[int]]:
    """Put ``state``'s sequences into ``ctx`` (a new, empty context with the same key); the tokens each
    sequence holds now. A sequence llama.cpp refuses (returns 0) is left empty: it is decoded as usual."""
    restored: dict[int, list[int]] = {}
    for seq in state.sequences:
        buf = (ctypes.c_uint8 * len(seq.data)).from_buffer_copy(seq.data)
        if int(L.llama_state_seq_set_data(ctx, buf, len(seq.data), seq.seq_id)) > 0:
            restored[seq.seq_id] = list(seq.tokens)
        else:
            L.llama_memory_seq_rm(L.llama_get_memory(ctx), seq.seq_id, -1, -1)
    return restored
