"""The disk tier of saved KV state (``--kvcache-dir``): a stopped worker's conversation, kept in a file.

Why: a parked worker keeps its conversation's KV state in its own memory (``kvstate.py``), but a worker that
is stopped — evicted when even its parked size does not fit, idle past its keep-alive, unloaded, or ended with
warren itself — takes it along. Re-reading a 1,000-token chat costs seconds on a CPU; reading its state back
from a file costs tens of milliseconds. So before a worker with cached state stops, the pool asks it to write
the state here (``SaveState``), and a parked worker whose state the budget takes back (``DropState``) writes it
here first; the next worker for the same model and settings — even after a restart of warren — reads it back.

One file per model file and context shape: its name is a hash of the state key (``state_key``, which already
holds the model file's path, size and modification time and every setting that shapes the cells, flash
attention included), plus the engine's version (llama.cpp's state layout is its own). The token prefix the
cells hold is stored with them, and the next prompt is compared with it token by token, as for a state kept in
memory; what differs is decoded as usual. The file is read only when a new context is made, before any prompt
is known, so a model keeps one conversation here: its latest.

Files are never trusted: a file is used only if its magic, format version, header, key (the whole key, not
only its hash in the name), lengths and SHA-256 all check; anything else is ignored with a warning and
deleted, never handed to llama.cpp. Files live on disk and count nothing against the memory budget; their
total is bounded by ``--kvcache-size``, the least recently used (file modification time: written or read)
deleted first.

Layout::

    +-------------+--------------+-----------------+-------------+------------------------------------+
    | "WARRENKV"  | version: u32 | header len: u32 | header JSON | payload: per sequence, its tokens   |
    | (8 bytes)   | little end.  | little end.     |             | (int32 LE), then its state bytes    |
    +-------------+--------------+-----------------+-------------+------------------------------------+

The header: ``{"key": canonical JSON of the key, "sequences": [{"seq_id", "n_tokens", "n_bytes"}],
"sha256": of the payload}``. No ``llama_cpp`` here: the supervisor reads the directory for ``--check``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MAGIC = b"WARRENKV"
VERSION = 1
PREFIX = struct.Struct("<8sII")
MAX_HEADER = 1 << 20  # a real header is a few hundred bytes: anything larger is not ours
SUFFIX = ".kvstate"
DEFAULT_SIZE_MB = 2048  # --kvcache-size's default: ~90 conversations of 1,000 tokens of the default model


@dataclass(frozen=True, slots=True)
class StoredSequence:
    """One sequence as stored: the tokens whose K/V ``data`` holds (llama.cpp's own sequence state)."""

    seq_id: int
    tokens: tuple[int, ...]
    data: bytes


def canonical(key: Sequence[Any]) -> str:
    """The key as JSON text: what is stored, compared whole, and hashed into the file name."""
    return json.dumps(list(key), separators=(",", ":"))


def path_for(directory: Path, key: Sequence[Any]) -> Path:
    return directory / (hashlib.sha256(canonical(key).encode()).hexdigest()[:32] + SUFFIX)


def encode(key: Sequence[Any], sequences: Sequence[StoredSequence]) -> bytes:
    payload = b"".join(struct.pack(f"<{len(s.tokens)}i", *s.tokens) + s.data for s in sequences)
    header = json.dumps({"key": canonical(key), "sha256": hashlib.sha256(payload).hexdigest(),
                         "sequences": [{"seq_id": s.seq_id, "n_tokens": len(s.tokens), "n_bytes": len(s.data)}
                                       for s in sequences]}).encode()
    return PREFIX.pack(MAGIC, VERSION, len(header)) + header + payload


class Refused(ValueError):
    """A file that is not a state this context may use; the message says why (for the warning)."""


def decode(raw: bytes, key: Sequence[Any]) -> list[StoredSequence]:
    """The sequences of a file's bytes, if it is a whole, intact state made under ``key``; ``Refused`` else."""
    if len(raw) < PREFIX.size:
        raise Refused("shorter than its header (truncated)")
    magic, version, header_len = PREFIX.unpack_from(raw)
    if magic != MAGIC:
        raise Refused("not a warren KV state file (bad magic)")
    if version != VERSION:
        raise Refused(f"format version {version}, this warren reads {VERSION}")
    if header_len > MAX_HEADER or PREFIX.size + header_len > len(raw):
        raise Refused("header longer than the file (truncated or corrupt)")
    try:
        header = json.loads(raw[PREFIX.size:PREFIX.size + header_len])
        stored_key, digest = str(header["key"]), str(header["sha256"])
        layout = [(int(s["seq_id"]), int(s["n_tokens"]), int(s["n_bytes"])) for s in header["sequences"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise Refused(f"unreadable header ({type(exc).__name__})") from None
    if stored_key != canonical(key):
        raise Refused("made for another model file or other settings (its key differs)")
    payload = memoryview(raw)[PREFIX.size + header_len:]
    if any(n < 0 or b < 0 for _, n, b in layout) or sum(4 * n + b for _, n, b in layout) != len(payload):
        raise Refused("payload length differs from its header (truncated or corrupt)")
    if hashlib.sha256(payload).hexdigest() != digest:
        raise Refused("checksum mismatch (corrupt)")
    sequences, at = [], 0
    for seq_id, n, b in layout:
        tokens = struct.unpack_from(f"<{n}i", payload, at)
        at += 4 * n
        sequences.append(StoredSequence(seq_id, tokens, bytes(payload[at:at + b])))
        at += b
    return sequences


def write(directory: Path, key: Sequence[Any], sequences: Sequence[StoredSequence], limit: int) -> Path | None:
    """Store ``sequences`` under ``key`` (replacing that key's file, atomically), then delete the least recently
    used files until the directory's states take at most ``limit`` bytes. None when the state alone is larger."""
    raw = encode(key, sequences)
    if len(raw) > limit:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    target = path_for(directory, key)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".writing-", suffix=SUFFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(tmp, target)  # readers see the old file or the new one, never half of one
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    prune(directory, limit, keep=target)
    return target


def read(directory: Path, key: Sequence[Any], warn: Callable[[str], None]) -> list[StoredSequence] | None:
    """The state stored under ``key``, or None: no file, or one that is refused (``warn`` says why, and the file
    is deleted: it can never be used). A file used is touched, so the size bound deletes it last."""
    path = path_for(directory, key)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        warn(f"KV state file {path} cannot be read ({exc.strerror}): ignored")
        return None
    try:
        sequences = decode(raw, key)
    except Refused as exc:
        warn(f"KV state file {path} refused: {exc}; deleted, the prompt is decoded as usual")
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    with contextlib.suppress(OSError):
        os.utime(path)
    return sequences


def files(directory: Path) -> list[os.stat_result]:
    """The state files' stats (not the temporary files of writes under way)."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if entry.name.endswith(SUFFIX) and not entry.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    found.append(entry.stat())
    return found


def usage(directory: Path) -> tuple[int, int]:
    """(files, bytes) of the states stored in ``directory``: what ``--check`` shows."""
    stats = files(directory)
    return len(stats), sum(s.st_size for s in stats)


def prune(directory: Path, limit: int, keep: Path | None = None) -> int:
    """Delete the least recently used state files until the rest take at most ``limit`` bytes (never ``keep``,
    the one just written). Returns the bytes deleted."""
    entries = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if entry.name.endswith(SUFFIX) and not entry.name.startswith("."):
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    entries.append((st.st_mtime_ns, st.st_size, Path(entry.path)))
    total = sum(size for _, size, _ in entries)
    deleted = 0
    for _, size, path in sorted(entries):
        if total <= limit:
            break
        if keep is not None and path == keep:
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            total -= size
            deleted += size
    return deleted
