"""ContextShift (KoboldCpp's default; ``--noshift`` turns it off): a prompt that dropped the oldest part of
what is cached reuses the rest of the cache instead of decoding it again.

Why: a story or chat at full context is trimmed by its client every turn — the memory (or system text) at
the start stays, the oldest story text after it goes, the newest turn is added. The cache then shares only
the memory with the new prompt, and the whole window (~1,000 tokens at ``--contextsize 1024``: seconds on a
CPU) was decoded again each turn. Here the dropped span is taken out of the cache (``llama_memory_seq_rm``)
and the cells after it moved down by its length (``llama_memory_seq_add``: llama.cpp re-rotates their keys
to the new positions), so only the genuinely new tokens are decoded.

How the span is found (the idea of KoboldCpp's ``PurgeMissingTokens``, written anew): after the prefix the
cache and the prompt share, the prompt must go on with text the cache holds further on. The first
``PROBE`` prompt tokens after the prefix are looked for in the cache after the prefix; where they are found,
everything between the prefix and there is the dropped span. Too short a probe could match by chance, so a
prompt with fewer than ``MIN_PROBE`` tokens left after the prefix is not shifted.

A shifted cache is not the cache a fresh decode would build: the kept cells were computed with the dropped
text in view. So, as in KoboldCpp, shifted output need not equal a fresh decode token for token.
"""

from __future__ import annotations

from typing import Any

import llama_cpp as L

PROBE = 32  # prompt tokens after the shared prefix that must be found together in the cache
MIN_PROBE = 16  # fewer left after the prefix: no shift (a short run could match by chance)


def shared_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def dropped_span(cached: list[int], tokens: list[int]) -> tuple[int, int] | None:
    """(start, length) of the span of ``cached`` that ``tokens`` dropped, or None when the prompt does not
    continue the cache after a cut (it only extends it, or diverges)."""
    start = shared_prefix(cached, tokens)
    probe = tokens[start : start + PROBE]
    if len(probe) < MIN_PROBE or start >= len(cached):
        return None
    first, n = probe[0], len(probe)
    at = start + 1
    while True:
        try:
            at = cached.index(first, at, len(cached) - n + 1)
        except ValueError:
            return None
        if cached[at : at + n] == probe:
            return start, at - start
        at += 1


def shift(ctx: Any, seq_id: int, cached: list[int], span: tuple[int, int]) -> list[int] | None:
    """Take ``span`` out of sequence ``seq_id``'s cells and move the rest down; the tokens it holds now, or
    None when llama.cpp refused (the caller then decodes as usual)."""
    start, length = span
    memory = L.llama_get_memory(ctx)
    if not L.llama_memory_seq_rm(memory, seq_id, start, start + length):
        return None
    L.llama_memory_seq_add(memory, seq_id, start + length, -1, -length)
    return cached[:start] + cached[start + length :]


def can_shift(ctx: Any) -> bool:
    """Whether llama.cpp can move this context's cells (not some SWA, recurrent or M-RoPE caches)."""
    return bool(L.llama_memory_can_shift(L.llama_get_memory(ctx)))
