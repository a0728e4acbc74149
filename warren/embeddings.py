"""Embeddings: the one internal request shape every dialect's embeddings route translates into, and its result.

KoboldCpp (``/api/extra/embeddings``), OpenAI (``/v1/embeddings``) and Ollama (``/api/embed``,
``/api/embeddings``) differ only in their fields and bodies; what reaches the worker is an ``EmbedRequest``
(``warren/worker/protocol.py`` ``Embed``), and what comes back an ``EmbeddingResult``. The dialects' own
rules are the two knobs here: whether vectors are scaled to unit length, and what happens to an input
longer than the model's context.
"""

from __future__ import annotations

import base64
import enum
import struct
from array import array
from dataclasses import dataclass
from typing import Any

from warren.bounds import EMBED_MAX_INPUTS, EMBED_MAX_TOKENS, TOKEN_ID_LIMIT
from warren.errors import InvalidRequest

Input = str | tuple[int, ...]  # a text, or token ids (OpenAI accepts both)


class Truncate(enum.StrEnum):
    """An input longer than the model's context: refused, or cut to fit."""

    REFUSE = "refuse"  # OpenAI: a 400 that says by how much
    KEEP_START = "keep_start"  # Ollama's ``truncate: true`` (its default): the end is cut off
    KEEP_END = "keep_end"  # KoboldCpp: the start is cut off, the BOS token put back in front


@dataclass(frozen=True, slots=True)
class EmbedRequest:
    inputs: tuple[Input, ...]
    normalize: bool = True  # scale each vector to unit length (L2)
    truncate: Truncate = Truncate.REFUSE

    def check(self) -> EmbedRequest:
        """The bounds a request must stay within before it goes to a worker (``warren/bounds.py``). Token
        counts of texts are only known in the worker, which checks ``EMBED_MAX_TOKENS`` again for them."""
        if not self.inputs:
            raise InvalidRequest("input is empty: give a string, or a list of strings or token arrays", param="input")
        if len(self.inputs) > EMBED_MAX_INPUTS:
            raise InvalidRequest(f"{len(self.inputs)} inputs in one request; the limit is {EMBED_MAX_INPUTS}",
                                 param="input", hint="send them in several requests")
        given = 0
        for i, item in enumerate(self.inputs):
            if isinstance(item, tuple):
                if any(not 0 <= t < TOKEN_ID_LIMIT for t in item):
                    raise InvalidRequest(f"input {i} has a token id outside [0, {TOKEN_ID_LIMIT})", param="input")
                given += len(item)
        if given > EMBED_MAX_TOKENS:
            raise InvalidRequest(f"{given} tokens in one request; the limit is {EMBED_MAX_TOKENS}", param="input",
                                 hint="send them in several requests")
        return self

    def as_wire(self) -> dict[str, Any]:
        return {"inputs": [list(i) if isinstance(i, tuple) else i for i in self.inputs],
                "normalize": self.normalize, "truncate": self.truncate.value}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> EmbedRequest:
        inputs = tuple(i if isinstance(i, str) else tuple(int(t) for t in i) for i in data["inputs"])
        return cls(inputs, bool(data["normalize"]), Truncate(data["truncate"]))


@dataclass(frozen=True, slots=True)
class EmbeddingResult:
    """``len(tokens)`` vectors of ``dim`` float32 values, little-endian and concatenated: the bytes OpenAI's
    ``encoding_format: base64`` sends, kept as they came from the worker."""

    data: bytes
    dim: int
    tokens: tuple[int, ...]  # tokens embedded per input (after truncation)
    seconds: float = 0.0

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def prompt_tokens(self) -> int:
        return sum(self.tokens)

    def _slice(self, index: int) -> bytes:
        width = 4 * self.dim
        return self.data[index * width : (index + 1) * width]

    def vector(self, index: int) -> list[float]:
        values = array("f")
        values.frombytes(self._slice(index))
        if struct.pack("=f", 1.0) != struct.pack("<f", 1.0):  # a big-endian host reads the wire's order
            values.byteswap()
        return values.tolist()

    def vectors(self) -> list[list[float]]:
        return [self.vector(i) for i in range(len(self))]

    def base64(self, index: int) -> str:
        return base64.b64encode(self._slice(index)).decode("ascii")
