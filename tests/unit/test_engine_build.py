"""The engine build's decisions: which variant, under which key, and the fall back to a portable build.

No compiler runs here (the real build is ``./dev.sh``'s, and the probe's tests are in
``tests/integration/test_engine_probe.py``): the CPU's answers and the probe are given.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from warren import engine_build as eb
from warren import engine_check
from warren.engine_check import EngineReport


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WARREN_ENGINE_CACHE", str(tmp_path / "engines"))
    monkeypatch.delenv("CMAKE_ARGS", raising=False)
    eb.machine_key.cache_clear()
    yield tmp_path / "engines"
    eb.machine_key.cache_clear()


def test_engine_build_reads_the_pinned_engine_from_pyproject() -> None:
    assert eb.engine_requirement() == "llama-cpp-python==0.3.36"


def test_engine_build_compiles_out_amx_where_it_is_advertised_but_faults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eb, "cpu_flags", lambda: {"avx2", "avx512f", "amx_tile", "amx_int8", "amx_bf16"})
    monkeypatch.setattr(eb, "amx_runs", lambda: (False, "AMX is advertised but its tile instructions die with signal 4"))
    variant = eb.choose_variant(eb.NATIVE)
    assert "-DGGML_NATIVE=ON" in variant.cmake_args
    for lang in ("C", "CXX"):
        assert f"'-DCMAKE_{lang}_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in variant.cmake_args
    assert "AMX compiled out" in variant.note


def test_engine_build_keeps_amx_where_it_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eb, "cpu_flags", lambda: {"avx2", "amx_tile"})
    monkeypatch.setattr(eb, "amx_runs", lambda: (True, "AMX tile instructions run"))
    variant = eb.choose_variant(eb.NATIVE)
    assert variant.cmake_args == "-DGGML_NATIVE=ON" and "AMX kept" in variant.note


def test_engine_build_portable_variant_enables_only_what_the_cpu_has(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eb, "cpu_flags", lambda: {"sse4_2", "avx", "f16c"})
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_OPENMP=OFF")
    args = eb.choose_variant(eb.PORTABLE).cmake_args.split()
    assert args[:2] == ["-DGGML_OPENMP=OFF", "-DGGML_NATIVE=OFF"]  # the user's arguments are kept, first
    assert {"-DGGML_SSE42=ON", "-DGGML_AVX=ON", "-DGGML_F16C=ON", "-DGGML_AVX2=OFF", "-DGGML_FMA=OFF",
            "-DGGML_BMI2=OFF"} <= set(args)


def test_engine_build_key_changes_with_the_cpu_and_the_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    """A wheel built for another CPU or with other flags lives under another key, so it is never found."""
    monkeypatch.setattr(eb, "native_target", lambda: "-march=znver3 -mavx512f")
    here = eb.machine_key()
    wheel_dir = eb.folder(eb.NATIVE)
    wheel_dir.mkdir(parents=True)
    (wheel_dir / "llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl").write_bytes(b"")
    assert eb.cached_wheel(eb.NATIVE) is not None
    eb.machine_key.cache_clear()
    monkeypatch.setattr(eb, "native_target", lambda: "-march=sapphirerapids -mavx512f -mamx-tile")
    assert eb.machine_key() != here and eb.cached_wheel(eb.NATIVE) is None
    eb.machine_key.cache_clear()
    monkeypatch.setattr(eb, "native_target", lambda: "-march=znver3 -mavx512f")
    monkeypatch.setenv("CMAKE_ARGS", "-DGGML_CUDA=ON")
    assert eb.machine_key() != here


def test_engine_build_falls_back_to_portable_when_the_native_build_dies(monkeypatch: pytest.MonkeyPatch) -> None:
    died = EngineReport(False, error="the engine probe was killed by SIGILL while decoding", unrunnable=True)
    reports = iter([died, EngineReport(True, {"version": "0.3.36"}, decoded=8)])
    monkeypatch.setattr(engine_check, "probe_engine", lambda engine="llama": next(reports))
    installed: list[str | None] = []
    monkeypatch.setattr(eb, "install", installed.append)
    eb.verify()
    assert installed == [eb.PORTABLE]
    assert (eb.folder(eb.NATIVE) / eb.FAILED_MARK).read_text().startswith("the engine probe was killed by SIGILL")
    assert eb.current_variant_name() == eb.PORTABLE  # not tried natively again on this machine
    eb.forget()
    assert eb.current_variant_name() == eb.NATIVE


def test_engine_build_stops_with_one_line_when_nothing_runs(monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    died = EngineReport(False, error="the engine probe was killed by SIGILL while decoding", unrunnable=True,
                        hint="rebuild the engine for this machine: ./dev.sh rebuild-engine")
    monkeypatch.setattr(engine_check, "probe_engine", lambda engine="llama": died)
    monkeypatch.setattr(eb, "install", lambda name=None: None)
    assert eb.main(["verify"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-2] == ("error: the llama.cpp engine does not run on this machine: "
                       "the engine probe was killed by SIGILL while decoding")
    assert err[-1] == "hint: rebuild the engine for this machine: ./dev.sh rebuild-engine"
