"""The streaming GGUF reader: the real model's header, and one clear error per kind of bad file."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from warren.errors import ModelFileError
from warren.gguf.reader import SkippedArray, read_gguf


def write_gguf(path: Path, n_tensor_elems: int = 64, version: int | None = None) -> Path:
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(2)
    w.add_context_length(512)
    w.add_embedding_length(8)
    w.add_head_count(2)
    w.add_token_list([f"tok{i}" for i in range(300)])
    w.add_tensor("blk.0.w", np.ones(n_tensor_elems, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if version is not None:
        with open(path, "r+b") as f:
            f.seek(4)
            f.write(struct.pack("<I", version))
    return path


def test_reads_the_default_model_header(model_path: Path) -> None:
    info = read_gguf(model_path)
    assert info.architecture == "llama"
    assert info.block_count == 30
    assert info.context_length == 8192
    assert info.head_count == 9 and info.head_count_kv == 3
    assert info.vocab_size == 49152
    assert isinstance(info.metadata["tokenizer.ggml.tokens"], SkippedArray)
    assert "<|im_start|>" in (info.chat_template or "")
    assert info.quantization == "Q4_1"
    # Tensor data ends inside the file and the data section is aligned.
    assert info.data_offset % 32 == 0
    assert info.data_offset + max(t.offset + t.nbytes for t in info.tensors) <= info.file_size


def test_agrees_with_the_gguf_package_on_a_small_file(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "small.gguf")
    ours = read_gguf(path)
    theirs = gguf.GGUFReader(str(path))
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    assert ours.data_offset == theirs.data_offset
    assert ours.tensors[0].nbytes == int(theirs.tensors[0].n_bytes)
    assert ours.metadata["tokenizer.ggml.tokens"] == SkippedArray("STRING", 300)


def with_bytes(name: str, data: bytes):  # type: ignore[no-untyped-def]
    def make(folder: Path) -> Path:
        (folder / name).write_bytes(data)
        return folder / name
    return make


def a_directory(folder: Path) -> Path:
    (folder / "dir.gguf").mkdir()
    return folder / "dir.gguf"


def test_per_layer_numbers_are_kept_and_long_string_arrays_skipped(tmp_path: Path) -> None:
    w = gguf.GGUFWriter(str(tmp_path / "layers.gguf"), "llama")
    w.add_block_count(100)
    w.add_array("llama.attention.head_count_kv", [i % 5 for i in range(100)])
    w.add_array("llama.attention.sliding_window_pattern", [i % 2 == 0 for i in range(100)])
    w.add_array("llama.feed_forward_length", [256, 1024, 512] + [128] * 97)
    w.add_array("general.tags", [f"tag{i}" for i in range(100)])
    w.add_token_list([f"tok{i}" for i in range(10)])
    w.add_array("tokenizer.ggml.merges", ["a b", "c d"])
    w.add_tensor("blk.0.w", np.ones(32, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    info = read_gguf(tmp_path / "layers.gguf")
    assert info.per_layer("attention.head_count_kv") == tuple(i % 5 for i in range(100))
    assert info.metadata["llama.attention.sliding_window_pattern"] == [i % 2 == 0 for i in range(100)]
    assert info.feed_forward_length == 1024 and info.per_layer("feed_forward_length")[:2] == (256, 1024)
    assert info.per_layer("attention.head_count") is None  # absent
    assert info.metadata["general.tags"] == SkippedArray("STRING", 100)
    # A short token list is kept as a list; it still counts as the vocabulary.
    assert info.vocab_size == 10 and info.merge_count == 2


@pytest.mark.parametrize(("make", "expected"), [
    (lambda p: p / "missing.gguf", "not found"),
    (a_directory, "is a directory"),
    (with_bytes("x.gguf", b"PK\x03\x04" + b"\0" * 100), "is not a GGUF file"),
    (with_bytes("tiny.gguf", b"GG"), "only 2 bytes"),
    (lambda p: write_gguf(p / "v9.gguf", version=9), "unsupported GGUF version 9"),
    (lambda p: write_gguf(p / "v1.gguf", version=1), "unsupported GGUF version 1"),
])
def test_bad_files_each_get_their_own_message(tmp_path: Path, make, expected: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ModelFileError) as info:
        read_gguf(make(tmp_path))
    assert expected in info.value.message
    assert info.value.hint or expected in ("is a directory",)


def test_truncated_tensor_data(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "t.gguf", n_tensor_elems=4096)
    os.truncate(path, path.stat().st_size - 1000)
    with pytest.raises(ModelFileError, match="is truncated: its tensor data ends at byte"):
        read_gguf(path)


def test_header_cut_short(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "h.gguf")
    os.truncate(path, 200)  # inside the metadata
    with pytest.raises(ModelFileError, match="header is cut short"):
        read_gguf(path)


def test_absurd_counts(tmp_path: Path) -> None:
    path = tmp_path / "absurd.gguf"
    path.write_bytes(struct.pack("<IIQQ", gguf.GGUF_MAGIC, 3, 2**40, 2**40) + b"\0" * 64)
    with pytest.raises(ModelFileError, match="more than a .*-byte file can hold"):
        read_gguf(path)


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root reads any file whatever its mode, so the permission failure is injected where it surfaces.
    path = write_gguf(tmp_path / "locked.gguf")

    def deny(*_a: object, **_k: object) -> int:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("warren.gguf.reader.os.open", deny)
    with pytest.raises(ModelFileError, match="is not readable"):
        read_gguf(path)
