"""Property test: mutated, truncated and random GGUF files give a clear error — never another
exception, never a hang — in the reader and in validation."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.unit.test_gguf_reader import write_gguf
from warren.errors import ModelFileError
from warren.gguf.reader import read_gguf
from warren.options import defaults
from warren.validation import Environment, ValidationFailed, validate

ENV = Environment(memlock_limit=lambda: (-1, False), port_problem=lambda h, p: None, auto_threads=lambda: 2)


@pytest.fixture(scope="module")
def valid_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_gguf(tmp_path_factory.mktemp("g") / "v.gguf", n_tensor_elems=256).read_bytes()


def check(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.gguf"
        path.write_bytes(data)
        try:
            read_gguf(path)
        except ModelFileError as exc:
            assert exc.message and str(path) in exc.message or "GGUF" in exc.message
        try:
            validate({**defaults(), "model": [str(path)]}, env=ENV, check_port=False)
        except ValidationFailed as exc:
            assert exc.errors and all(f.message for f in exc.errors)


mutation = st.tuples(st.integers(min_value=0, max_value=4000), st.binary(min_size=1, max_size=8))


@settings(max_examples=300, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutations=st.lists(mutation, min_size=1, max_size=6), cut=st.one_of(st.none(), st.integers(0, 5000)))
def test_mutated_headers(valid_bytes: bytes, mutations: list[tuple[int, bytes]], cut: int | None) -> None:
    data = bytearray(valid_bytes)
    for offset, chunk in mutations:
        offset %= len(data)
        data[offset : offset + len(chunk)] = chunk
    check(bytes(data[:cut] if cut is not None else data))


@settings(max_examples=200, deadline=5000)
@given(st.binary(max_size=512))
def test_random_bytes_after_the_magic(tail: bytes) -> None:
    check(b"GGUF" + tail)
    check(tail)
