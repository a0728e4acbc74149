"""Every validation rule, one table row each: the finding's level and words, and the fix it applies.

The machine facts (memlock limit, port availability, CPU count) are stated by each row through a
fake ``Environment``, so the table means the same on every machine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from warren.options import defaults
from warren.validation import Environment, Level, ValidationFailed, validate

NO_LIMIT = Environment(memlock_limit=lambda: (-1, False), port_problem=lambda h, p: None, auto_threads=lambda: 4)


def opts(model: Path | None, **changes: Any) -> dict[str, Any]:
    o = defaults()
    o["model"] = [str(model)] if model else []
    o.update(changes)
    return o


# (id, option changes, explicit keys, environment, expected level, words in the message, expected fixes)
ROWS: list[tuple[str, dict[str, Any], set[str], Environment, Level, str, dict[str, Any]]] = [
    ("context too small", {"contextsize": 100}, set(), NO_LIMIT, Level.ERROR, "outside [256, 262144]", {}),
    ("context too large", {"contextsize": 300000}, set(), NO_LIMIT, Level.ERROR, "outside [256, 262144]", {}),
    ("context above training", {"contextsize": 16384}, set(), NO_LIMIT, Level.WARNING, "training context (8192)", {}),
    ("bad batch size", {"batchsize": 100}, set(), NO_LIMIT, Level.ERROR, "--batchsize 100 is not a valid choice", {}),
    ("defaultgenamt range", {"defaultgenamt": 10}, set(), NO_LIMIT, Level.ERROR, "--defaultgenamt 10", {}),
    ("negative genlimit", {"genlimit": -1}, set(), NO_LIMIT, Level.ERROR, "--genlimit -1 is negative", {}),
    ("threads auto", {"threads": 0}, set(), NO_LIMIT, Level.NOTE, "picked automatically: 4", {"threads": 4}),
    ("threads negative auto", {"threads": -3}, set(), NO_LIMIT, Level.NOTE, "picked automatically", {"threads": 4}),
    ("quantkv needs fa", {"quantkv": 1}, set(), NO_LIMIT, Level.WARNING, "without --flashattention", {}),
    ("quantkv choice", {"quantkv": 5}, set(), NO_LIMIT, Level.ERROR, "--quantkv 5 is not a valid choice", {}),
    ("rope negative", {"ropeconfig": [-1.0]}, set(), NO_LIMIT, Level.ERROR, "--ropeconfig", {}),
    ("mlock implies mmap", {"usemlock": True}, {"usemlock"}, NO_LIMIT, Level.NOTE, "implies --usemmap",
     {"usemmap": True}),
    ("mlock with nommap", {"usemlock": True, "nommap": True}, {"usemlock", "nommap"}, NO_LIMIT, Level.ERROR,
     "--usemlock with --nommap is refused", {}),
    ("mmap and nommap", {"usemmap": True, "nommap": True}, set(), NO_LIMIT, Level.ERROR, "contradict", {}),
    ("mlock over the limit", {"usemlock": True}, set(),
     Environment(memlock_limit=lambda: (8 * 2**20, False), port_problem=lambda h, p: None), Level.ERROR,
     "ulimit -l", {}),
    ("port in use", {}, set(), Environment(memlock_limit=lambda: (-1, False), port_problem=lambda h, p: "in use"),
     Level.ERROR, "cannot listen on :5001: in use", {}),
    ("port out of range", {"port": 70000}, set(), NO_LIMIT, Level.ERROR, "port 70000 is outside", {}),
    ("negative multiuser", {"multiuser": -2}, set(), NO_LIMIT, Level.ERROR, "--multiuser -2", {}),
    ("request size", {"maxrequestsize": 0}, set(), NO_LIMIT, Level.ERROR, "--maxrequestsize 0", {}),
    ("parallel requests", {"parallelrequests": 0}, set(), NO_LIMIT, Level.ERROR, "--parallelrequests 0", {}),
    ("flash attention both ways", {"flashattention": True, "noflashattention": True}, set(), NO_LIMIT, Level.ERROR,
     "--flashattention and --noflashattention contradict", {}),
    ("empty password", {"password": ""}, set(), NO_LIMIT, Level.ERROR, "--password is empty", {}),
    ("blank admin password", {"adminpassword": "  "}, set(), NO_LIMIT, Level.ERROR, "--adminpassword is empty", {}),
    ("admin without dir", {"admin": True}, set(), NO_LIMIT, Level.WARNING, "admin mode stays off", {"admin": False}),
    ("admin dir missing", {"admin": True, "admindir": "/no/such/dir"}, set(), NO_LIMIT, Level.ERROR,
     "is not an existing directory", {}),
    ("gpu layers clamped", {"gpulayers": 99}, set(), NO_LIMIT, Level.NOTE, "clamped to 31", {"gpulayers": 31}),
    ("gpu layers negative", {"gpulayers": -5}, set(), NO_LIMIT, Level.ERROR, "--gpulayers -5 is negative", {}),
    ("nomodel", {"nomodel": True}, set(), NO_LIMIT, Level.NOTE, "--nomodel", {"model": []}),
    ("budget unparsable", {"memorybudget": "lots"}, set(), NO_LIMIT, Level.ERROR, "is not an amount of memory", {}),
    ("budget over RAM", {"memorybudget": "100T"}, set(), NO_LIMIT, Level.WARNING, "more than this machine", {}),
    ("max models negative", {"maxmodels": -1}, set(), NO_LIMIT, Level.ERROR, "--max-models -1 is negative", {}),
    ("keepalive unparsable", {"keepalive": "soon"}, set(), NO_LIMIT, Level.ERROR, "is not a duration", {}),
    ("loadwait negative", {"loadwait": -1.0}, set(), NO_LIMIT, Level.ERROR, "--loadwait -1.0 is negative", {}),
    ("models dir missing", {"modelsdir": "/no/such"}, set(), NO_LIMIT, Level.ERROR, "is not an existing directory",
     {}),
    ("catalog missing", {"catalog": "/no/such.toml"}, set(), NO_LIMIT, Level.ERROR, "is not a file", {}),
    ("embeddings model missing", {"embeddingsmodel": "/no/such.gguf"}, set(), NO_LIMIT, Level.ERROR,
     "--embeddingsmodel:", {}),
    ("kvcache dir a file", {"kvcachedir": "/etc/hostname"}, set(), NO_LIMIT, Level.ERROR, "is not a directory", {}),
    ("kvcache dir parent missing", {"kvcachedir": "/no/such/kv"}, set(), NO_LIMIT, Level.ERROR,
     "its parent /no/such does not exist", {}),
    ("kvcache size", {"kvcachedir": "/tmp", "kvcachesize": 0}, set(), NO_LIMIT, Level.ERROR,
     "--kvcache-size 0 is not a size", {}),
    ("kvcache size without dir", {"kvcachesize": 100}, {"kvcachesize"}, NO_LIMIT, Level.WARNING,
     "without --kvcache-dir does nothing", {}),
]


@pytest.mark.parametrize(("changes", "explicit", "env", "level", "words", "fix"),
                         [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_rule(model_path: Path, changes: dict[str, Any], explicit: set[str], env: Environment, level: Level,
              words: str, fix: dict[str, Any]) -> None:
    o = opts(model_path, **changes)
    if level is Level.ERROR:
        with pytest.raises(ValidationFailed) as info:
            validate(o, explicit, env=env)
        assert any(words in f.message for f in info.value.errors), [f.message for f in info.value.errors]
        assert all(f.hint for f in info.value.errors)
        return
    plan = validate(o, explicit, env=env)
    matching = [f for f in plan.findings if words in f.message]
    assert matching and matching[0].level is level, [(f.level, f.message) for f in plan.findings]
    for key, value in fix.items():
        if key == "threads":
            assert plan.model is not None and plan.model.threads == value
        elif key == "gpulayers":
            assert plan.model is not None and plan.model.gpu_layers == value
        elif key == "usemmap":
            assert plan.model is not None and plan.model.use_mmap and plan.model.use_mlock
        elif key == "model":
            assert plan.model is None
        elif key == "admin":
            assert plan.server.admin is value


@pytest.mark.parametrize(("setup", "words"), [
    ("missing", "model file not found"),
    ("directory", "is a directory"),
    ("not gguf", "is not a GGUF file"),
    ("version", "unsupported GGUF version"),
    ("truncated", "is truncated"),
])
def test_model_file_rules(tmp_path: Path, model_path: Path, setup: str, words: str) -> None:
    from tests.unit.test_gguf_reader import write_gguf

    path = tmp_path / "m.gguf"
    if setup == "directory":
        path.mkdir()
    elif setup == "not gguf":
        path.write_text("hello, I am a text file")
    elif setup == "version":
        write_gguf(path, version=7)
    elif setup == "truncated":
        path.write_bytes(model_path.read_bytes()[:5_000_000])
    with pytest.raises(ValidationFailed) as info:
        validate(opts(path), env=NO_LIMIT)
    assert words in info.value.errors[0].message


def test_a_valid_configuration_becomes_settings(model_path: Path) -> None:
    plan = validate(opts(model_path, contextsize=4096, threads=3, flashattention=True, quantkv=1,
                         ropeconfig=[0.5, 20000.0]), env=NO_LIMIT)
    assert plan.model is not None
    m = plan.model
    assert (m.context_size, m.threads, m.batch_threads, m.flash_attention, m.quant_kv) == (4096, 3, 3, "on", 1)
    assert (m.rope_freq_scale, m.rope_freq_base) == (0.5, 20000.0)
    assert m.use_mmap and not m.use_mlock
    assert plan.server.host == "127.0.0.1" and plan.server.queue_limit == 6
    assert plan.server.park and plan.server.warm_spare
    quiet = validate(opts(model_path, nopark=True, nowarmspare=True), env=NO_LIMIT).server
    assert not quiet.park and not quiet.warm_spare


def test_every_error_is_reported_not_only_the_first(model_path: Path) -> None:
    with pytest.raises(ValidationFailed) as info:
        validate(opts(model_path, contextsize=1, batchsize=3, password=""), env=NO_LIMIT)
    assert len(info.value.errors) == 3
