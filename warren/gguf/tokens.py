"""Which of a few given strings are whole tokens of a GGUF's vocabulary, without decoding the vocabulary.

Recognising a model family (``warren/chat_adapters.py``) needs to know whether, say, ``<start_of_turn>``
is one of its tokens. The header reader skips the vocabulary (250,000 strings would cost a second in
Python); here its bytes are read once and searched for each candidate as GGUF writes a string: an 8-byte
little-endian length, then the UTF-8 bytes. A length prefix plus bytes that happen to sit across two
tokens' boundary would need the previous token to end in those exact 8 bytes, which a real vocabulary's
short strings do not.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

from warren.gguf.reader import GGUFInfo, SkippedArray

MAX_VOCAB_BYTES = 64 * 2**20  # the largest vocabularies (256k tokens) take ~5 MB


def whole_tokens(info: GGUFInfo, candidates: Iterable[str]) -> frozenset[str]:
    """The candidates that are tokens of ``info``'s vocabulary (none when it cannot be read)."""
    tokens = info.metadata.get("tokenizer.ggml.tokens")
    wanted = set(candidates)
    if isinstance(tokens, list):  # a tiny vocabulary is read whole by the header reader
        return frozenset(wanted & {str(t) for t in tokens})
    if not isinstance(tokens, SkippedArray) or tokens.element_type != "STRING" or \
            not 0 < tokens.end - tokens.start <= MAX_VOCAB_BYTES:
        return frozenset()
    try:
        fd = os.open(info.path, os.O_RDONLY)
    except OSError:
        return frozenset()
    try:
        body = os.pread(fd, tokens.end - tokens.start, tokens.start)
    finally:
        os.close(fd)
    return frozenset(t for t in wanted if struct.pack("<Q", len(t.encode())) + t.encode() in body)
