"""An embeddings batch whose client left stops in the worker before its next decode (issue 15), on the real
default model, in this process: the engine is the worker's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from warren.embeddings import EmbedRequest
from warren.errors import ClientGone
from warren.settings import ModelSettings
from warren.worker.embedding import SEQUENCES_PER_DECODE
from warren.worker.engine import LlamaEngine


def test_a_cancelled_batch_stops_before_its_next_decode(model_path: Path) -> None:
    engine = LlamaEngine()
    engine.load(ModelSettings(name="smol", path=model_path, context_size=512), lambda _fraction: None)
    inputs = tuple(f"sentence number {i}" for i in range(3 * SEQUENCES_PER_DECODE))  # three decodes
    asked: list[int] = []

    def cancelled() -> bool:
        asked.append(1)
        return len(asked) > 1  # the client leaves while the first decode runs

    try:
        assert len(engine.embed(EmbedRequest(inputs=inputs)).tokens) == len(inputs)  # the premise: all of it
        with pytest.raises(ClientGone):
            engine.embed(EmbedRequest(inputs=inputs), cancelled)
        assert len(asked) == 2  # one decode ran, the second was not started
    finally:
        engine.park(keep_state_bytes=0)
