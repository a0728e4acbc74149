"""The catalog: directory scans, .kcpps entries, the TOML catalog file, and change detection."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from warren.catalog import Catalog
from warren.errors import ConfigError, ModelNotFound
from warren.options import defaults
from warren.units import parse_bytes, parse_duration


def place(model: Path, target: Path) -> None:
    """A real file (not a symlink, which would lead out of the directory): a hard link, else a copy."""
    try:
        os.link(model, target)
    except OSError:
        import shutil

        shutil.copyfile(model, target)


def base() -> dict:
    return {**defaults(), "threads": 2, "blasthreads": 2, "contextsize": 1024}


def test_directory_entries_are_named_after_their_files(tmp_path: Path, model_path: Path) -> None:
    place(model_path, tmp_path / "plain.gguf")
    (tmp_path / "tuned.kcpps").write_text(json.dumps({"model_param": str(model_path), "contextsize": 512,
                                                      "flashattention": True}))
    (tmp_path / "broken.kcpps").write_text("{nope")
    (tmp_path / "notes.txt").write_text("ignored")
    catalog = Catalog(base(), dirs=(tmp_path,))
    catalog.refresh()
    assert sorted(catalog.entries) == ["broken", "plain", "tuned"]
    assert catalog.entries["plain"].settings.context_size == 1024  # the command line's settings
    tuned = catalog.entries["tuned"].settings
    assert tuned.context_size == 512 and tuned.flash_attention and tuned.name == "tuned"
    assert not catalog.entries["broken"].valid and "not valid JSON" in catalog.entries["broken"].error
    assert catalog.entries["tuned"].estimate.kv_cache < catalog.entries["plain"].estimate.kv_cache


def test_changes_and_removals_are_seen(tmp_path: Path, model_path: Path) -> None:
    config = tmp_path / "m.kcpps"
    config.write_text(json.dumps({"model_param": str(model_path), "contextsize": 512}))
    catalog = Catalog(base(), dirs=(tmp_path,))
    catalog.refresh()
    first = catalog.get("m")
    config.write_text(json.dumps({"model_param": str(model_path), "contextsize": 2048}))
    os.utime(config, (time.time() + 10, time.time() + 10))
    assert first.stale
    second = catalog.get("m")  # re-read on request
    assert second.settings.context_size == 2048 and second.fingerprint != first.fingerprint
    config.unlink()
    catalog.refresh()
    with pytest.raises(ModelNotFound, match="model 'm' not found"):
        catalog.get("m")


def test_toml_catalog_file(tmp_path: Path, model_path: Path) -> None:
    kcpps = tmp_path / "x.kcpps"
    kcpps.write_text(json.dumps({"model_param": str(model_path), "contextsize": 768}))
    file = tmp_path / "catalog.toml"
    file.write_text(f"""
[defaults]
keep_alive = "10m"

[models.small]
model = "{model_path}"
contextsize = 512
pinned = true
priority = 2

[models.fromconfig]
config = "{kcpps}"
keep_alive = -1
""")
    catalog = Catalog(base(), catalog_file=file)
    catalog.refresh()
    small, other = catalog.entries["small"], catalog.entries["fromconfig"]
    assert small.settings.context_size == 512 and small.pinned and small.priority == 2
    assert small.keep_alive == 600
    assert other.settings.context_size == 768 and other.keep_alive == -1 and other.settings.name == "fromconfig"


@pytest.mark.parametrize(("content", "words"), [
    ("[models.a]\ncontextsize = 512\n", "needs 'model'"),
    ("[models.a]\nmodel = 'x.gguf'\nsdmodel = 'y'\n", "'sdmodel' is not a model option"),
    ("[models.a]\nmodel = 'x.gguf'\nport = 1\n", "'port' is not a model option"),
    ("[models.a]\nmodel = 'x.gguf'\npinned = 'yes'\n", "pinned must be true or false"),
    ("[models.a]\nmodel = 'x.gguf'\nkeep_alive = 'soon'\n", "is not a duration"),
    ("[other]\n", "unknown section"),
    ("[models\n", "not valid TOML"),
])
def test_toml_catalog_errors(tmp_path: Path, content: str, words: str) -> None:
    file = tmp_path / "c.toml"
    file.write_text(content)
    with pytest.raises(ConfigError, match=words):
        Catalog(base(), catalog_file=file).refresh()


def test_admin_file_lookup_takes_names_in_the_directory_and_follows_the_operators_links(tmp_path: Path,
                                                                                        model_path: Path) -> None:
    inside = tmp_path / "models"
    inside.mkdir()
    (inside / "ok.gguf").symlink_to(model_path)  # the operator's link to a file elsewhere is followed
    (tmp_path / "real.gguf").write_bytes(b"GGUF")
    (inside / "dangling.gguf").symlink_to(tmp_path / "nowhere.gguf")
    (inside / "loop.gguf").symlink_to(inside / "loop.gguf")
    (inside / "sub.gguf").mkdir()
    assert Catalog.inside(inside, "ok.gguf") == inside / "ok.gguf"
    for name in ("../real.gguf", "x.txt", "dangling.gguf", "loop.gguf", "sub.gguf", "", "..", "a\0.gguf"):
        assert Catalog.inside(inside, name) is None, name
    (inside / "own.gguf").write_bytes(b"GGUF")
    assert Catalog.inside(inside, "own.gguf") == inside / "own.gguf"
    (inside / "notes.txt").write_text("x")
    catalog = Catalog(defaults(), dirs=(inside,))
    catalog.refresh()
    assert catalog.skipped == {str(inside / "dangling.gguf"): f"a link to {tmp_path / 'nowhere.gguf'}, which does not exist",
                               str(inside / "loop.gguf"): f"a link to {inside / 'loop.gguf'}, which does not exist",
                               str(inside / "notes.txt"): "not a .gguf, .kcpps or .kcppt file",
                               str(inside / "sub.gguf"): "not a regular file"}


def test_units() -> None:
    assert parse_bytes("8G", 0) == 8 * 2**30 and parse_bytes("512MiB", 0) == 512 * 2**20
    assert parse_bytes("50%", 1000) == 500 and parse_bytes("1234", 0) == 1234
    assert parse_bytes("lots", 0) is None
    assert parse_duration("5m", "x") == 300 and parse_duration("90s", "x") == 90 and parse_duration(-1, "x") == -1
    assert parse_duration("1h", "x") == 3600 and parse_duration("250ms", "x") == 0.25
