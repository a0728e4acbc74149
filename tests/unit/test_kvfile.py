"""The disk tier's file format (``warren/worker/kvfile.py``): a state comes back only from a whole, intact file
made under the same key; every other file is refused with its reason, deleted, and never handed to llama.cpp."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from warren.worker import kvfile
from warren.worker.kvfile import Refused, StoredSequence

KEY = ("/models/smol.gguf", 1234, 5678, 0, 2048, 0, "auto", 0.0, 0.0, 1, 512, True, "llama-cpp-python", "0.3")
STATE = [StoredSequence(0, (1, 2, 3, 40000), b"\x00\x01K/V cells" * 100)]


def test_a_state_round_trips() -> None:
    assert kvfile.decode(kvfile.encode(KEY, STATE), KEY) == STATE


def flip(raw: bytes, at: int) -> bytes:
    return raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:]


RAW = kvfile.encode(KEY, STATE)
HEADER_END = kvfile.PREFIX.size + struct.unpack_from("<I", RAW, 12)[0]


@pytest.mark.parametrize(("raw", "key", "words"), [
    (b"", KEY, "truncated"),
    (b"GGUF" + RAW[4:], KEY, "bad magic"),
    (RAW[:8] + struct.pack("<I", 2) + RAW[12:], KEY, "format version 2"),
    (RAW[:HEADER_END - 5], KEY, "header longer than the file"),
    (RAW[:-1], KEY, "payload length differs"),
    (RAW + b"\x00", KEY, "payload length differs"),
    (flip(RAW, len(RAW) - 10), KEY, "checksum mismatch"),
    (RAW[:kvfile.PREFIX.size] + b"{" * (HEADER_END - kvfile.PREFIX.size) + RAW[HEADER_END:], KEY, "unreadable header"),
    (RAW, (*KEY[:4], 4096, *KEY[5:]), "another model file or other settings"),
    (RAW, (*KEY[:2], 5679, *KEY[3:]), "another model file or other settings"),
    (RAW, (*KEY[:11], False, *KEY[12:]), "another model file or other settings"),
], ids=["empty", "magic", "version", "cut header", "cut payload", "longer payload", "corrupt", "header garbage",
        "other context size", "model file changed", "other flash attention"])
def test_a_file_that_is_not_this_state_is_refused(raw: bytes, key: tuple, words: str) -> None:
    with pytest.raises(Refused, match=words):
        kvfile.decode(raw, key)


def test_reading_a_refused_file_warns_and_deletes_it(tmp_path: Path) -> None:
    path = kvfile.write(tmp_path, KEY, STATE, 1 << 20)
    assert path is not None
    path.write_bytes(flip(path.read_bytes(), path.stat().st_size - 1))
    warnings: list[str] = []
    assert kvfile.read(tmp_path, KEY, warnings.append) is None
    assert len(warnings) == 1 and "checksum mismatch" in warnings[0]
    assert not path.exists()


def test_a_state_is_read_back_by_its_key_only(tmp_path: Path) -> None:
    kvfile.write(tmp_path, KEY, STATE, 1 << 20)
    warnings: list[str] = []
    assert kvfile.read(tmp_path, KEY, warnings.append) == STATE
    assert kvfile.read(tmp_path, (*KEY[:4], 4096, *KEY[5:]), warnings.append) is None  # no file under that key
    assert warnings == []


def test_files_are_bounded_least_recently_used_first(tmp_path: Path) -> None:
    size = len(kvfile.encode(KEY, STATE))
    keys = [(*KEY[:4], ctx, *KEY[5:]) for ctx in (1024, 2048, 4096)]
    for i, key in enumerate(keys):
        path = kvfile.write(tmp_path, key, STATE, 3 * size)
        assert path is not None
        os.utime(path, ns=(i * 10**9, i * 10**9))  # written in this order, a second apart
    assert kvfile.read(tmp_path, keys[0], print) == STATE  # read: the most recently used now
    kvfile.write(tmp_path, (*KEY[:4], 8192, *KEY[5:]), STATE, 3 * size)
    assert kvfile.usage(tmp_path) == (3, 3 * size)
    assert not kvfile.path_for(tmp_path, keys[1]).exists()  # the least recently used went
    assert kvfile.path_for(tmp_path, keys[0]).exists() and kvfile.path_for(tmp_path, keys[2]).exists()


def test_a_state_larger_than_the_bound_is_not_written(tmp_path: Path) -> None:
    assert kvfile.write(tmp_path, KEY, STATE, 100) is None
    assert kvfile.usage(tmp_path) == (0, 0)
