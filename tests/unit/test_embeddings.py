"""The embeddings request's bounds and wire form, and the result's two encodings (``warren/embeddings.py``)."""

from __future__ import annotations

import base64
import struct

import pytest

from warren.bounds import EMBED_MAX_INPUTS, EMBED_MAX_TOKENS
from warren.embeddings import EmbeddingResult, EmbedRequest, Truncate
from warren.errors import InvalidRequest


@pytest.mark.parametrize(("inputs", "words"), [
    ((), "input is empty"),
    (("a",) * (EMBED_MAX_INPUTS + 1), f"the limit is {EMBED_MAX_INPUTS}"),
    (((0,) * (EMBED_MAX_TOKENS + 1),), f"the limit is {EMBED_MAX_TOKENS}"),
    (((1, -1),), "token id outside"),
    (((2**31,),), "token id outside"),
], ids=["empty", "too many inputs", "too many tokens", "negative id", "id over int32"])
def test_bounds_refuse(inputs: tuple[str | tuple[int, ...], ...], words: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        EmbedRequest(inputs).check()
    assert words in refused.value.message and refused.value.details["param"] == "input"


def test_within_bounds_and_wire_round_trip() -> None:
    request = EmbedRequest(("a", (1, 2, 3)), normalize=False, truncate=Truncate.KEEP_END).check()
    assert EmbedRequest.from_wire(request.as_wire()) == request


def test_result_floats_and_base64_are_the_same_values() -> None:
    values = [0.5, -1.25, 3.0, 0.1]
    result = EmbeddingResult(struct.pack("<4f", *values), 2, (3, 4))
    assert result.prompt_tokens == 7 and len(result) == 2
    assert result.vectors() == [[0.5, -1.25], [3.0, struct.unpack("<f", struct.pack("<f", 0.1))[0]]]
    assert base64.b64decode(result.base64(1)) == struct.pack("<2f", 3.0, 0.1)
