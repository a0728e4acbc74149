"""A streaming GGUF header reader: metadata and tensor table, never the tensor data.

Why not ``gguf.GGUFReader``: it memory-maps the file and materialises every metadata array (the
49k-entry vocabulary, the merges), which takes seconds. Validation reads a header before every
start and every load, so this reader walks the header once and *skips* array bodies, keeping only
their element type and count. Format constants and quantisation block sizes come from the ``gguf``
package, so nothing here duplicates its tables.

Every way a file can be wrong is a ``ModelFileError`` with its own message: missing, a directory,
unreadable, not GGUF (magic), unsupported version, a header cut short, an absurd count, or tensor
data that runs past the end of the file.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from warren.errors import ModelFileError

SUPPORTED_VERSIONS = (2, 3)  # v1 used 32-bit counts and predates every model llama.cpp still loads

# Arrays up to these lengths are kept, longer ones skipped: numbers and flags up to one per layer of the
# deepest models (per-layer head counts, sliding-window patterns), strings up to a handful (tags, languages).
SMALL_ARRAY = 64
SMALL_NUMERIC_ARRAY = 1024

_SCALAR_FORMATS: dict[gguf.GGUFValueType, str] = {
    gguf.GGUFValueType.UINT8: "<B",
    gguf.GGUFValueType.INT8: "<b",
    gguf.GGUFValueType.UINT16: "<H",
    gguf.GGUFValueType.INT16: "<h",
    gguf.GGUFValueType.UINT32: "<I",
    gguf.GGUFValueType.INT32: "<i",
    gguf.GGUFValueType.FLOAT32: "<f",
    gguf.GGUFValueType.BOOL: "<?",
    gguf.GGUFValueType.UINT64: "<Q",
    gguf.GGUFValueType.INT64: "<q",
    gguf.GGUFValueType.FLOAT64: "<d",
}
_SCALAR_STRUCTS = {t: struct.Struct(f) for t, f in _SCALAR_FORMATS.items()}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class SkippedArray:
    """An array whose body was skipped: its element type, its length, and where its body lies in the file
    (``start``/``end`` byte offsets, for a reader that wants one look at it: ``warren/gguf/tokens.py``)."""

    element_type: str
    count: int
    start: int = field(default=0, compare=False)
    end: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    ggml_type: str
    offset: int  # relative to the start of the data section
    nbytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True, slots=True)
class GGUFInfo:
    """What a GGUF header says about a model, plus the file facts validation needs."""

    path: Path
    file_size: int
    version: int
    metadata: dict[str, Any]
    tensors: tuple[TensorInfo, ...]
    data_offset: int
    _arch: str = field(default="", repr=False)

    # -- convenience views over the metadata -------------------------------------------------------
    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    def arch_value(self, suffix: str, default: Any = None) -> Any:
        """``{arch}.<suffix>``, the per-architecture keys (``llama.block_count`` …)."""
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    @property
    def name(self) -> str:
        return str(self.metadata.get("general.name") or self.path.stem)

    @property
    def context_length(self) -> int:
        return int(self.arch_value("context_length", 0) or 0)

    @property
    def block_count(self) -> int:
        return int(self.arch_value("block_count", 0) or 0)

    @property
    def embedding_length(self) -> int:
        return int(self.arch_value("embedding_length", 0) or 0)

    @property
    def head_count(self) -> int:
        return _first_int(self.arch_value("attention.head_count", 0))

    @property
    def head_count_kv(self) -> int:
        return _first_int(self.arch_value("attention.head_count_kv", None)) or self.head_count

    @property
    def key_length(self) -> int:
        default = self.embedding_length // self.head_count if self.head_count else 0
        return int(self.arch_value("attention.key_length", default) or default)

    @property
    def value_length(self) -> int:
        default = self.embedding_length // self.head_count if self.head_count else 0
        return int(self.arch_value("attention.value_length", default) or default)

    @property
    def feed_forward_length(self) -> int:
        """The widest layer's FFN (some models store one width per layer)."""
        value = self.arch_value("feed_forward_length", 0)
        return max((int(v) for v in value), default=0) if isinstance(value, list) else int(value or 0)

    def per_layer(self, suffix: str) -> tuple[int, ...] | None:
        """``{arch}.<suffix>`` for each layer: a per-layer array as stored, a single value repeated; None
        when the key is absent (or an array of the wrong length)."""
        value = self.arch_value(suffix)
        if value is None or isinstance(value, SkippedArray):
            return None
        if isinstance(value, list):
            return tuple(int(v) for v in value) if len(value) == self.block_count else None
        return (int(value),) * self.block_count

    @property
    def vocab_size(self) -> int:
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokens, SkippedArray | list):
            return tokens.count if isinstance(tokens, SkippedArray) else len(tokens)
        return int(self.arch_value("vocab_size", 0) or 0)

    @property
    def merge_count(self) -> int:
        """BPE merge rules: llama.cpp keeps each one in a hash table, as it does each token."""
        merges = self.metadata.get("tokenizer.ggml.merges")
        if isinstance(merges, SkippedArray):
            return merges.count
        return len(merges) if isinstance(merges, list) else 0

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)

    @property
    def parameter_count(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def quantization(self) -> str:
        """The dominant tensor type by bytes, e.g. ``Q4_1``: what users call the model's quantisation."""
        by_type: dict[str, int] = {}
        for t in self.tensors:
            by_type[t.ggml_type] = by_type.get(t.ggml_type, 0) + t.nbytes
        return max(by_type, key=by_type.__getitem__) if by_type else "unknown"


def _first_int(value: Any) -> int:
    """Head counts may be per-layer arrays: the first layer's value (``GGUFInfo.per_layer`` has them all)."""
    if isinstance(value, list):
        return int(value[0]) if value else 0
    return int(value or 0)


class _Cursor:
    """Bounds-checked little-endian reads over a mapped file; running off the end is a clear error."""

    __slots__ = ("buf", "pos", "size", "path")

    def __init__(self, buf: mmap.mmap | bytes, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.size = len(buf)
        self.path = path

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ModelFileError(
                f"{self.path}: the GGUF header is cut short while reading {what} "
                f"(needs {n} bytes at offset {self.pos}, the file has {self.size})",
                hint="the download is probably incomplete; fetch the file again",
            )

    def unpack(self, st: struct.Struct, what: str) -> Any:
        self._need(st.size, what)
        (value,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return value

    def u32(self, what: str) -> int:
        return int(self.unpack(_U32, what))

    def u64(self, what: str) -> int:
        return int(self.unpack(_U64, what))

    def string(self, what: str) -> str:
        n = self.u64(what)
        self._need(n, what)
        raw = self.buf[self.pos : self.pos + n]
        self.pos += n
        return bytes(raw).decode("utf-8", errors="replace")

    def skip_strings(self, count: int, what: str) -> None:
        """Skip ``count`` length-prefixed strings without decoding them (the vocabulary, merges)."""
        buf, pos, size, unpack = self.buf, self.pos, self.size, _U64.unpack_from
        for _ in range(count):
            if pos + 8 > size:
                self.pos = pos
                self._need(8, what)
            pos += 8 + unpack(buf, pos)[0]
        self.pos = pos
        if pos > size:
            self.pos = size
            self._need(1, what)


def _value_type(raw: int, key: str, path: Path) -> gguf.GGUFValueType:
    try:
        return gguf.GGUFValueType(raw)
    except ValueError:
        raise ModelFileError(f"{path}: metadata key {key!r} has unknown value type {raw}",
                             hint="the file is corrupt or written by an incompatible tool") from None


def _read_value(cur: _Cursor, vtype: gguf.GGUFValueType, key: str) -> Any:
    if vtype == gguf.GGUFValueType.STRING:
        return cur.string(f"the value of {key!r}")
    if vtype == gguf.GGUFValueType.ARRAY:
        etype = _value_type(cur.u32(f"the array type of {key!r}"), key, cur.path)
        count = cur.u64(f"the array length of {key!r}")
        if count > cur.size:
            raise ModelFileError(f"{cur.path}: metadata array {key!r} claims {count} elements, more than "
                                 f"the file has bytes", hint="the file is corrupt")
        if count <= SMALL_NUMERIC_ARRAY and etype in _SCALAR_FORMATS:
            fmt = struct.Struct(f"<{count}{_SCALAR_FORMATS[etype][1]}")
            cur._need(fmt.size, f"the body of {key!r}")
            values = list(fmt.unpack_from(cur.buf, cur.pos))
            cur.pos += fmt.size
            return values
        if count <= SMALL_ARRAY and etype == gguf.GGUFValueType.STRING:
            return [_read_value(cur, etype, key) for _ in range(count)]
        start = cur.pos
        if etype == gguf.GGUFValueType.STRING:
            cur.skip_strings(count, f"the strings of {key!r}")
        elif etype in _SCALAR_STRUCTS:
            n = count * _SCALAR_STRUCTS[etype].size
            cur._need(n, f"the body of {key!r}")
            cur.pos += n
        else:
            for _ in range(count):  # nested arrays are rare; walk them
                _read_value(cur, etype, key)
        return SkippedArray(etype.name, count, start, cur.pos)
    st = _SCALAR_STRUCTS.get(vtype)
    if st is None:
        raise ModelFileError(f"{cur.path}: metadata key {key!r} has unsupported type {vtype.name}")
    return cur.unpack(st, f"the value of {key!r}")


def _tensor_nbytes(shape: tuple[int, ...], type_id: int, name: str, path: Path) -> tuple[str, int]:
    try:
        qtype = gguf.GGMLQuantizationType(type_id)
        block, type_size = gguf.GGML_QUANT_SIZES[qtype]
    except (ValueError, KeyError):
        raise ModelFileError(f"{path}: tensor {name!r} has unknown type {type_id}",
                             hint="the file may need a newer llama.cpp, or it is corrupt") from None
    n = 1
    for d in shape:
        n *= d
    if n % block:
        raise ModelFileError(f"{path}: tensor {name!r} has {n} elements, not a multiple of its "
                             f"{qtype.name} block size {block}", hint="the file is corrupt")
    return qtype.name, n // block * type_size


def _open_checked(path: Path) -> int:
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}",
                             hint="check the path; relative paths are taken from the current directory")
    if path.is_dir():
        raise ModelFileError(f"model path is a directory, not a file: {path}",
                             hint="give the .gguf file inside it")
    try:
        return os.open(path, os.O_RDONLY)
    except PermissionError:
        raise ModelFileError(f"model file is not readable: {path}",
                             hint="check its permissions (the server's user needs read access)") from None
    except OSError as exc:
        raise ModelFileError(f"cannot open model file {path}: {exc.strerror}") from None


def read_gguf(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read a GGUF file's header. Raises ``ModelFileError`` for every kind of bad file."""
    path = Path(path)
    fd = _open_checked(path)
    try:
        size = os.fstat(fd).st_size
        if size < 8:
            raise ModelFileError(f"{path} is not a GGUF file: it is only {size} bytes long",
                                 hint="the download is probably incomplete; fetch the file again")
        try:
            buf: mmap.mmap | bytes = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except OSError:
            buf = os.pread(fd, size, 0)  # some filesystems cannot map; headers are small enough
        try:
            return _parse(buf, path, size)
        finally:
            if isinstance(buf, mmap.mmap):
                buf.close()
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def _parse(buf: mmap.mmap | bytes, path: Path, size: int) -> GGUFInfo:
    cur = _Cursor(buf, path)
    magic = cur.u32("the magic number")
    if magic != gguf.GGUF_MAGIC:
        head = bytes(buf[:4])
        raise ModelFileError(
            f"{path} is not a GGUF file (it starts with {head!r}, GGUF files start with b'GGUF')",
            hint="warren loads GGUF models only; convert others with llama.cpp's convert_hf_to_gguf.py",
        )
    version = cur.u32("the version")
    if version not in SUPPORTED_VERSIONS:
        raise ModelFileError(
            f"{path}: unsupported GGUF version {version} (warren reads versions "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))})",
            hint="convert the model again with a current llama.cpp",
        )
    n_tensors = cur.u64("the tensor count")
    n_kv = cur.u64("the metadata count")
    if n_tensors > size // 16 or n_kv > size // 16:
        raise ModelFileError(f"{path}: the header claims {n_tensors} tensors and {n_kv} metadata keys, "
                             f"more than a {size}-byte file can hold", hint="the file is corrupt")

    metadata: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string("a metadata key")
        vtype = _value_type(cur.u32(f"the type of {key!r}"), key, path)
        metadata[key] = _read_value(cur, vtype, key)

    tensors: list[TensorInfo] = []
    for _ in range(n_tensors):
        name = cur.string("a tensor name")
        n_dims = cur.u32(f"the rank of tensor {name!r}")
        if n_dims > 8:
            raise ModelFileError(f"{path}: tensor {name!r} claims {n_dims} dimensions", hint="the file is corrupt")
        shape = tuple(cur.u64(f"the shape of tensor {name!r}") for _ in range(n_dims))
        type_id = cur.u32(f"the type of tensor {name!r}")
        offset = cur.u64(f"the offset of tensor {name!r}")
        type_name, nbytes = _tensor_nbytes(shape, type_id, name, path)
        tensors.append(TensorInfo(name, shape, type_name, offset, nbytes))

    alignment = metadata.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise ModelFileError(f"{path}: general.alignment is {alignment!r}, not a power of two",
                             hint="the file is corrupt")
    data_offset = (cur.pos + alignment - 1) // alignment * alignment
    end = max((t.offset + t.nbytes for t in tensors), default=0)
    if data_offset + end > size:
        raise ModelFileError(
            f"{path} is truncated: its tensor data ends at byte {data_offset + end}, "
            f"but the file has only {size} bytes",
            hint="the download is probably incomplete; fetch the file again",
        )
    return GGUFInfo(path=path, file_size=size, version=version, metadata=metadata,
                    tensors=tuple(tensors), data_offset=data_offset)
