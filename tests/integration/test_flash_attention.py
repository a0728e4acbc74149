"""The flash-attention choice (issue 13): forced by a flag, or measured per model and CPU and remembered.
The rule and the cache as plain functions; the worker's probe and its use of the cache on a real worker."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import pytest

from tests.conftest import Servers
from warren import flash_attention as fa
from warren.settings import ModelSettings


@pytest.mark.parametrize(("on", "off", "chosen"), [
    (16.9, 46.8, False),  # Intel Xeon at 2,000 tokens of context: 2.8x slower, off
    (40.6, 65.3, False),  # the same at 256
    (101.0, 93.0, True),  # AMD EPYC at 1,000: a little faster, on
    (141.0, 141.3, True),  # even: llama.cpp's default (on) stays
    (95.0, 100.0, True),  # within the noise: on
])
def test_flash_attention_stays_on_unless_clearly_slower(on: float, off: float, chosen: bool) -> None:
    assert fa.choose(on, off) is chosen
    assert fa.Measured(on, off).choice is chosen


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WARREN_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "flash-attention.json"


def test_measurements_are_kept_per_model_cpu_engine_and_threads(cache: Path, model_path: Path) -> None:
    two, four = fa.key(model_path, 2, 0, "0.3.36"), fa.key(model_path, 4, 0, "0.3.36")
    assert two != four != fa.key(model_path, 2, 0, "0.3.37")
    assert fa.recall(two) is None
    fa.remember(two, fa.Measured(10.0, 100.0))
    assert fa.recall(two) == fa.Measured(10.0, 100.0) and fa.recall(four) is None
    cache.write_text("{not json")  # a broken cache is no cache: measured again, then rewritten
    assert fa.recall(two) is None
    fa.remember(two, fa.Measured(50.0, 40.0))
    assert fa.recall(two) == fa.Measured(50.0, 40.0)


def test_the_estimate_expects_what_the_worker_will_run(cache: Path, model_path: Path) -> None:
    auto = ModelSettings(name="m", path=model_path, threads=2)
    assert fa.expected(dataclasses.replace(auto, flash_attention="on")) is True
    assert fa.expected(dataclasses.replace(auto, flash_attention="off")) is False
    assert fa.expected(auto) is True  # not measured yet: llama.cpp's auto
    fa.remember(fa.key(model_path, 2, 0, fa.engine_version()), fa.Measured(10.0, 100.0))
    assert fa.expected(auto) is False


def test_a_worker_measures_once_then_follows_the_kept_choice(cache: Path, servers: Servers, model_path: Path) -> None:
    first = servers.start("--model", str(model_path), "--contextsize", "1024", "--no-warm-spare")
    assert httpx.post(f"{first.url}/api/v1/generate", json={"prompt": "Hi", "max_length": 2}, timeout=60).is_success
    (measured,) = fa._read().values()
    assert measured["depth"] == fa.PROBE_DEPTH and measured["on"] > 0 and measured["off"] > 0
    first.stop()
    # A kept measurement that says flash attention is 10x slower here: the next worker runs it off, unmeasured.
    (key,) = fa._read()
    fa.remember(key, fa.Measured(10.0, 100.0))
    second = servers.start("--model", str(model_path), "--contextsize", "1024", "--no-warm-spare")
    assert "flash_attention=off (measured tokens/s at 256 of context: on 10.0, off 100.0)" in second.log()
    assert fa.recall(key) == fa.Measured(10.0, 100.0)  # not measured again
    forced = servers.start("--model", str(model_path), "--contextsize", "1024", "--no-warm-spare", "--flashattention")
    assert "flash_attention=on\n" in forced.log()
