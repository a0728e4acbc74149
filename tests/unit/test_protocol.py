"""Frames: round trips, versioning, and garbage detected as a protocol error."""

from __future__ import annotations

import msgpack
import pytest

from warren.errors import WarrenError, WorkerCrashed
from warren.params import GenerationParams
from warren.worker import protocol as p


@pytest.mark.parametrize("frame", [
    p.Generate(id=7, params=GenerationParams(prompt="hi", stop=("x",), logit_bias={5: -1.0}).as_wire(), stream=True),
    p.Token(id=7, text="héllo"),
    p.Done(id=7, text="abc", finish_reason="stop", prompt_tokens=3, completion_tokens=2),
    p.Failed(id=2, error=WorkerCrashed("boom", hint="h", returncode=-9).to_wire()),
    p.Hello(pid=42, engine="llama"),
    p.Ping(id=1),
])
def test_round_trip(frame: p.Frame) -> None:
    data = p.encode(frame)
    assert p.frame_length(data[:4]) == len(data) - 4
    assert p.decode(data[4:]) == frame


def test_params_survive_the_wire() -> None:
    params = GenerationParams(prompt="a", stop=("b", "c"), logit_bias={3: 2.5}, banned_strings=("z",))
    frame = p.decode(p.encode(p.Generate(id=1, params=params.as_wire()))[4:])
    assert isinstance(frame, p.Generate)
    assert GenerationParams.from_wire(frame.params) == params


def test_errors_are_rebuilt_as_the_same_class() -> None:
    err = WarrenError.from_wire(WorkerCrashed("died", hint="tail", returncode=-11).to_wire())
    assert type(err) is WorkerCrashed
    assert err.message == "died" and err.hint == "tail" and err.details["returncode"] == -11
    assert type(WarrenError.from_wire({"kind": "NoSuchKind", "message": "m"})) is WarrenError


@pytest.mark.parametrize("payload", [
    b"garbage!",
    msgpack.packb([1, 2, 3]),
    msgpack.packb({"v": 99, "t": "Ping", "id": 1}),
    msgpack.packb({"v": p.VERSION, "t": "Nope", "id": 1}),
    msgpack.packb({"v": p.VERSION, "t": "Ping", "id": 1, "extra": 1}),
])
def test_garbage_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode(payload)


def test_oversized_length_is_refused() -> None:
    with pytest.raises(p.ProtocolError):
        p.frame_length((p.MAX_FRAME + 1).to_bytes(4, "big"))


@pytest.mark.parametrize("params", [{"prompt": "x", "stop": ["\ud800"]}, {"prompt": "x", "logit_bias": {10**20: 1.0}}])
def test_what_msgpack_cannot_carry_is_unencodable_not_a_broken_channel(params: dict) -> None:
    with pytest.raises(p.Unencodable):
        p.encode(p.Generate(id=1, params=params))
