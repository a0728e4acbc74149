"""``.kcpps`` files as KoboldCpp writes them: every key, legacy keys, bad values, round trips."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from warren.errors import ConfigError
from warren.kcpps import export_kcpps, read_kcpps
from warren.options import OPTIONS, defaults

# The shape of a KoboldCpp v1.102 file (shared/reference/koboldcpp.md §2), trimmed as there.
V1102 = {"model": [], "model_param": "/models/Mistral.gguf", "port": 5001, "port_param": 5001, "host": "",
         "launch": False, "config": None, "threads": 7, "usecuda": ["normal", "0", "mmq"], "usevulkan": None,
         "useclblast": None, "usecpu": False, "contextsize": 8192, "gpulayers": 33, "tensor_split": None,
         "maingpu": -1, "batchsize": 512, "blasthreads": None, "lora": None, "loramult": 1.0, "noshift": False,
         "nofastforward": False, "useswa": False, "smartcontext": False, "ropeconfig": [0.0, 10000.0],
         "overridenativecontext": 0, "usemmap": False, "usemlock": False, "flashattention": True, "quantkv": 1,
         "lowvram": False, "noavx2": False, "failsafe": False, "debugmode": 0, "onready": "", "benchmark": None,
         "prompt": "", "cli": False, "genlimit": 0, "defaultgenamt": 768, "multiuser": 1, "multiplayer": False,
         "websearch": False, "remotetunnel": False, "quiet": False, "ssl": None, "nocertify": False,
         "password": None, "ratelimit": 0, "maxrequestsize": 32, "mmproj": None, "mmprojcpu": False,
         "visionmaxres": 1024, "draftmodel": None, "draftamount": 8, "draftgpulayers": 999,
         "chatcompletionsadapter": "AutoGuess", "jinja": False, "jinja_tools": False, "moeexperts": -1,
         "moecpu": 0, "overridekv": None, "overridetensors": None, "nomodel": False, "showgui": False,
         "skiplauncher": False, "singleinstance": False, "ignoremissing": False, "hordemodelname": "",
         "hordekey": "", "hordeworkername": "", "hordemaxctx": 0, "hordegenlen": 0, "sdmodel": "",
         "whispermodel": "", "ttsmodel": "", "embeddingsmodel": "", "admin": True, "admindir": "/models/configs",
         "adminpassword": "s3cret", "nommap": False, "noblas": False, "istemplate": False}


def write(tmp_path: Path, data: object, name: str = "c.kcpps") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_reads_a_koboldcpp_1102_file(tmp_path: Path) -> None:
    loaded = read_kcpps(write(tmp_path, V1102))
    v = loaded.values
    assert v["model"] == ["/models/Mistral.gguf"]
    assert (v["threads"], v["contextsize"], v["gpulayers"], v["flashattention"], v["quantkv"]) == (7, 8192, 33,
                                                                                                  True, 1)
    assert v["admin"] is True and v["admindir"] == "/models/configs" and v["adminpassword"] == "s3cret"
    assert loaded.ignored == ()  # every refused key is at its default: nothing to warn about


def test_legacy_keys_are_translated(tmp_path: Path) -> None:
    old = {"model_param": "m.gguf", "usecublas": ["normal", "0", "nommq"], "blasbatchsize": 256,
           "promptlimit": 100, "multiuser": 0}
    v = read_kcpps(write(tmp_path, old)).values
    assert v["batchsize"] == 256 and v["genlimit"] == 100 and v["usecuda"] == ["normal", "0", "nommq"]
    assert v["multiuser"] == 0


def test_non_default_unimplemented_keys_are_listed(tmp_path: Path) -> None:
    data = {**V1102, "sdmodel": "sd.safetensors", "lora": ["x.gguf"], "somethingnew": 5}
    assert read_kcpps(write(tmp_path, data)).ignored == ("lora", "sdmodel", "somethingnew")


def test_onready_is_never_taken_from_a_file(tmp_path: Path) -> None:
    loaded = read_kcpps(write(tmp_path, {**V1102, "onready": "rm -rf /"}))
    assert "onready" not in loaded.values and "onready" not in loaded.ignored


@pytest.mark.parametrize(("data", "words"), [
    ({"contextsize": "big"}, "'contextsize' is \"big\", expected a whole number"),
    ({"contextsize": 1.5}, "expected a whole number"),
    ({"flashattention": "yes"}, "expected true or false"),
    ({"ropeconfig": ["a"]}, "expected a list of numbers"),
    ({"password": 5}, "expected a string"),
    ({"model_param": ["a.gguf", "b.gguf"]}, "lists 2 files"),
])
def test_wrong_types_name_the_key(tmp_path: Path, data: dict, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        read_kcpps(write(tmp_path, data))
    assert words in info.value.message


@pytest.mark.parametrize(("content", "words"), [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "holds a JSON list, not an object"),
    ("", "is not valid JSON"),
])
def test_malformed_files(tmp_path: Path, content: str, words: str) -> None:
    path = tmp_path / "bad.kcpps"
    path.write_text(content)
    with pytest.raises(ConfigError, match=words):
        read_kcpps(path)


def test_missing_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        read_kcpps(tmp_path / "nope.kcpps")
    with pytest.raises(ConfigError, match="is a directory"):
        read_kcpps(tmp_path)


def test_export_writes_every_key_and_reads_back(tmp_path: Path) -> None:
    opts = {**defaults(), "model": ["/m/x.gguf"], "contextsize": 4096, "flashattention": True}
    path = export_kcpps(opts, tmp_path / "out")
    assert path.name == "out.kcpps"
    data = json.loads(path.read_text())
    assert {o.key for o in OPTIONS} <= set(data)
    assert data["model_param"] == "/m/x.gguf"
    back = read_kcpps(path).values
    assert back["contextsize"] == 4096 and back["flashattention"] is True and back["model"] == ["/m/x.gguf"]
