"""The frames a supervisor and a worker exchange, and their wire codec.

Wire format (one frame)::

    +----------------------+-------------------------------------------------------+
    | length: u32 big end. | msgpack map {"v": VERSION, "t": type, "id": req, ...} |
    +----------------------+-------------------------------------------------------+

- ``length`` counts the msgpack bytes only and is at most ``MAX_FRAME`` (a prompt of a few MB fits;
  anything larger is a bug or garbage on the channel, and is treated as a broken channel).
- ``v`` is the protocol version; a peer speaking another version is refused at ``Hello``.
- ``t`` names the frame class below; ``id`` is the request id (0 for frames about the worker itself).
- A generation is one ``Generate`` answered by any number of ``Token`` frames (only when it asked to
  stream) closed by exactly one ``Done`` or ``Failed``. ``Cancel`` asks the worker to stop early; the
  request still ends with its ``Done`` (finish reason ``abort``).
- Embeddings are one ``Embed`` (every input of the request) answered by one ``Embeddings`` or ``Failed``.
- Errors cross as ``Failed`` frames carrying ``WarrenError.to_wire()``, rebuilt on the other side as the
  same class.

The channel is a socketpair inherited by the child: not stdout, which native code may write to.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import msgpack

VERSION = 1
MAX_FRAME = 64 * 1024 * 1024
HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame: the channel is broken."""


class Unencodable(ValueError):
    """A frame we were about to send holds what msgpack cannot carry (a lone UTF-16 surrogate in a string,
    an integer beyond 64 bits) or is over ``MAX_FRAME``: the request is at fault, not the channel."""


@dataclass(frozen=True, slots=True)
class Frame:
    type_name: ClassVar[str] = ""
    registry: ClassVar[dict[str, type[Frame]]] = {}
    id: int = 0


# -- supervisor -> worker ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Load(Frame):
    settings: dict[str, Any] = field(default_factory=dict)  # ModelSettings.as_wire()
    prefault_bytes: int = 0  # the KV cache's estimated size, faulted in while the model loads
    prefault_after: list[int] = field(default_factory=list)  # pids of the workers this load replaces
    kvcache_dir: str = ""  # --kvcache-dir: the disk tier of KV states ("": none; warren/worker/kvfile.py)
    kvcache_bytes: int = 0  # --kvcache-size: the most its files may take


@dataclass(frozen=True, slots=True)
class Park(Frame):
    """Free the weights' pages, keep the model; a later ``Load`` resumes it. With ``keep_context`` the
    generation context stays whole when it takes at most ``keep_state_bytes`` (the resume then costs nothing);
    otherwise it is freed and the cached sequences' KV state is kept when it takes at most ``keep_state_bytes``
    (negative: any size; ``warren/worker/kvstate.py``). ``Result`` with ``{"state_bytes": kept, "context":
    whether the context was kept}``."""

    keep_state_bytes: int = -1
    keep_context: bool = False


@dataclass(frozen=True, slots=True)
class DropState(Frame):
    """A parked worker frees the KV state it kept (the pool needs the memory). ``Result``."""


@dataclass(frozen=True, slots=True)
class SaveState(Frame):
    """The pool is about to stop this worker: write its cached conversation (the context's, or the state kept
    while parked) to the disk tier named at ``Load``. ``Result`` with ``{"bytes": written}``."""


@dataclass(frozen=True, slots=True)
class Generate(Frame):
    params: dict[str, Any] = field(default_factory=dict)  # GenerationParams.as_wire()
    stream: bool = False


@dataclass(frozen=True, slots=True)
class Cancel(Frame):
    pass


@dataclass(frozen=True, slots=True)
class Tokenize(Frame):
    text: str = ""
    special: bool = True


@dataclass(frozen=True, slots=True)
class Detokenize(Frame):
    ids: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Embed(Frame):
    """Embed every input (a text, or a list of token ids) in one round trip: ``warren/embeddings.py``'s
    ``EmbedRequest.as_wire()``. Answered by ``Embeddings``."""

    request: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Ping(Frame):
    pass


@dataclass(frozen=True, slots=True)
class SetThreads(Frame):
    """The worker's share of the cores (``warren/pool/compute.py``): how many compute threads, on which CPUs.
    No answer; applied before the worker's next decode step."""

    threads: int = 0
    cores: list[int] = field(default_factory=list)


# -- worker -> supervisor ------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Hello(Frame):
    """The worker's interpreter is up and its engine library imported: it can take a ``Load``."""

    pid: int = 0
    version: int = VERSION
    engine: str = ""


@dataclass(frozen=True, slots=True)
class Progress(Frame):
    fraction: float = 0.0


@dataclass(frozen=True, slots=True)
class Ready(Frame):
    """The model is loaded. ``model`` describes it (context, vocabulary, chat template, special tokens)."""

    model: dict[str, Any] = field(default_factory=dict)
    load_seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Token(Frame):
    text: str = ""


@dataclass(frozen=True, slots=True)
class Done(Frame):
    text: str = ""  # the whole completion (also when it streamed: clients of /generate/check need it)
    finish_reason: str = "length"  # FinishReason value
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_seconds: float = 0.0
    generation_seconds: float = 0.0
    seed: int = 0
    cached_tokens: int = 0  # prompt tokens whose K/V were already in the cache (not decoded again)
    logprobs: list[Any] = field(default_factory=list)  # TokenLogprob.as_wire() per token, when asked


@dataclass(frozen=True, slots=True)
class Embeddings(Frame):
    """The vectors of an ``Embed``, in input order: ``len(tokens)`` vectors of ``dim`` little-endian float32
    values, concatenated (a quarter of the bytes of msgpack's float64 lists, and no per-value decoding)."""

    vectors: bytes = b""
    dim: int = 0
    tokens: list[int] = field(default_factory=list)  # tokens embedded per input (after any truncation)
    seconds: float = 0.0


@dataclass(frozen=True, slots=True)
class Result(Frame):
    value: Any = None


@dataclass(frozen=True, slots=True)
class Failed(Frame):
    error: dict[str, Any] = field(default_factory=dict)  # WarrenError.to_wire()


@dataclass(frozen=True, slots=True)
class Pong(Frame):
    pass


# Derived from the classes, so a new frame type needs no table edit. (Not __init_subclass__: slotted
# dataclasses are rebuilt by the decorator, which breaks the zero-argument super() it would need.)
for _cls in Frame.__subclasses__():
    _cls.type_name = _cls.__name__
    Frame.registry[_cls.__name__] = _cls


def encode(frame: Frame) -> bytes:
    body = {f.name: getattr(frame, f.name) for f in fields(frame)}
    body["v"] = VERSION
    body["t"] = frame.type_name
    try:
        payload = msgpack.packb(body, use_bin_type=True)
    except (OverflowError, UnicodeEncodeError, TypeError, ValueError) as exc:
        raise Unencodable(str(exc)) from None
    if len(payload) > MAX_FRAME:
        raise Unencodable(f"frame {frame.type_name} is {len(payload)} bytes, over the {MAX_FRAME} limit")
    return HEADER.pack(len(payload)) + payload


def decode(payload: bytes) -> Frame:
    """Decode one frame body (without its length header). Raises ``ProtocolError`` on garbage."""
    try:
        body = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from None
    if not isinstance(body, dict):
        raise ProtocolError(f"frame is a {type(body).__name__}, not a map")
    if body.pop("v", None) != VERSION:
        raise ProtocolError("frame has a missing or different protocol version")
    cls = Frame.registry.get(body.pop("t", None))  # type: ignore[arg-type]
    if cls is None:
        raise ProtocolError("frame has an unknown type")
    try:
        return cls(**body)
    except TypeError as exc:
        raise ProtocolError(f"frame {cls.type_name} has wrong fields: {exc}") from None


def frame_length(header: bytes) -> int:
    (length,) = HEADER.unpack(header)
    if length > MAX_FRAME:
        raise ProtocolError(f"frame length {length} is over the {MAX_FRAME} limit")
    return length
