"""The engine probe on real processes: the real engine and the default model, and an engine that dies of a
real illegal instruction, as a build for another CPU does."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from warren.engine_check import probe_engine

ILLEGAL = "tests.fakes.fake_engine:illegal_instruction"


@pytest.mark.model
def test_probe_of_the_real_engine_decodes(model_path: Path) -> None:
    report = probe_engine(model=model_path)
    assert report.ok, report.error
    assert report.build["version"] == "0.3.36"
    assert report.decoded == 8 and report.model == model_path.name
    assert "AVX2" in report.features or "NEON" in report.features  # llama.cpp reports what the build uses
    assert report.build["gpu_offload"] is False


def test_probe_names_the_signal_and_the_step_of_an_engine_that_cannot_run() -> None:
    report = probe_engine(ILLEGAL, Path("/dev/null"), locate=False)
    assert not report.ok and report.unrunnable
    assert report.error == ("the engine probe was killed by SIGILL while decoding: the llama.cpp build uses CPU "
                            "instructions this machine cannot run")
    assert report.hint == "rebuild the engine for this machine: ./dev.sh rebuild-engine"
    assert report.features == ["AVX2", "AMX_INT8"]  # what the (fake) build said before it died


@pytest.mark.skipif(shutil.which("gdb") is None, reason="naming the instruction needs gdb")
def test_probe_names_the_instruction_it_died_on() -> None:
    report = probe_engine(ILLEGAL, Path("/dev/null"))
    assert "while decoding, at ud2" in report.error or "while decoding, at udf" in report.error


def test_set_up_verify_fails_with_one_clear_line_for_an_engine_that_cannot_run() -> None:
    done = subprocess.run([sys.executable, "-m", "warren.engine_build", "verify", "--engine", ILLEGAL], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-2].startswith("error: the llama.cpp engine does not run on this machine: the engine probe was "
                                "killed by SIGILL while decoding")
    assert lines[-2].endswith("the llama.cpp build uses CPU instructions this machine cannot run")
    assert lines[-1] == "hint: rebuild the engine for this machine: ./dev.sh rebuild-engine"
