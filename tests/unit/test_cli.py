"""The ``warren`` command as a user runs it: exit status 2 with ``error: …`` + hint, never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port
from warren.gguf.estimate import estimate_memory
from warren.gguf.reader import read_gguf


def warren(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "warren", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def assert_clean_error(result: subprocess.CompletedProcess[str], words: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "error: " in result.stderr and words in result.stderr, result.stderr
    assert "hint: " in result.stderr


@pytest.mark.parametrize(("args", "words"), [
    (["/no/such/model.gguf"], "model file not found"),
    (["--contextsize", "64"], "--contextsize 64 is outside [256, 262144]"),
    (["--contextsize", "lots"], "invalid int value"),
    (["--usemlock", "--nommap"], "--usemlock with --nommap is refused"),
    (["--batchsize", "100"], "--batchsize 100 is not a valid choice"),
    (["--password", ""], "--password is empty"),
    (["--sdmodel", "x.safetensors"], "--sdmodel is a KoboldCpp flag warren does not implement"),
    (["--lora", "a.gguf"], "--lora is a KoboldCpp flag warren does not implement"),
    (["--config", "/no/such.kcpps"], "does not exist"),
    (["--nosuchflag"], "unrecognized arguments: --nosuchflag"),
])
def test_startup_errors(args: list[str], words: str) -> None:
    assert_clean_error(warren(*args), words)


def test_port_in_use(model_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert_clean_error(warren(str(model_path), str(port)), "in use")


def test_check_prints_the_plan(model_path: Path) -> None:
    result = warren("--check", "--model", str(model_path), "--contextsize", "2048", "--port", str(free_port()))
    assert result.returncode == 0, result.stderr
    for words in ("active model SmolLM2-135M-Instruct.Q4_1", "context 2048", "weights", "KV", "compute",
                  "worker", "total", "parked", "KV state", "memory budget",
                  "fit together in the budget: SmolLM2-135M-Instruct.Q4_1"):
        assert words in result.stdout
    # The engine is proven, not assumed: version, what the build uses, GPU offload, and a probe decode.
    assert "engine: llama-cpp-python 0.3.36" in result.stdout
    assert "CPU features used: " in result.stdout and "AVX2" in result.stdout
    assert "GPU offload: no (CPU only)" in result.stdout
    assert "probe: ok, decoded 8 tokens of SmolLM2-135M-Instruct.Q4_1.gguf" in result.stdout


def test_check_shows_requests_served_at_once_and_their_memory(model_path: Path) -> None:
    one = warren("--check", "--model", str(model_path), "--contextsize", "2048", "--port", str(free_port()))
    four = warren("--check", "--model", str(model_path), "--contextsize", "2048", "--port", str(free_port()),
                  "--parallelrequests", "4")
    assert four.returncode == 0, four.stderr
    assert "requests at once 4 (sharing one cache of the context's size)" in four.stdout
    assert "requests at once 1" in one.stdout

    def compute(out: str) -> float:  # the estimate's compute term, MiB: a batch of 4 sequences needs more
        return float(out.split("compute ")[1].split(" MiB")[0].replace(",", ""))

    assert compute(four.stdout) > compute(one.stdout)


def test_check_fails_when_the_engine_cannot_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
                                                ) -> None:
    from warren import engine_check
    from warren.cli import main as cli_main

    real = engine_check.probe_engine
    monkeypatch.setattr(engine_check, "probe_engine",
                        lambda model=None: real("tests.fakes.fake_engine:illegal_instruction", model, locate=False))
    with pytest.raises(SystemExit) as ended:
        cli_main.main(["--check", "--port", str(free_port())])
    assert ended.value.code == 2
    out, err = capsys.readouterr()
    assert "probe: FAILED: the engine probe was killed by SIGILL while decoding" in out
    assert "error: the engine probe was killed by SIGILL while decoding: the llama.cpp build uses CPU instructions " \
           "this machine cannot run" in err
    assert "hint: rebuild the engine for this machine: ./dev.sh rebuild-engine" in err


def test_check_with_no_model_uses_the_embedded_default() -> None:
    result = warren("--check", "--port", str(free_port()))
    assert result.returncode == 0, result.stderr
    assert "embedded default model" in result.stderr


def test_accepted_gui_flags_get_a_note(model_path: Path) -> None:
    result = warren("--check", str(model_path), "--skiplauncher", "--usecublas", "normal", "--port",
                    str(free_port()))
    assert result.returncode == 0, result.stderr
    assert "note: --skiplauncher is taken and has no effect" in result.stderr
    assert "note: --usecuda is taken and has no effect" in result.stderr


@pytest.mark.parametrize("flags", [
    # KoboldCpp's Colab launch line
    ["--usecublas", "0", "mmq", "--multiuser", "--gpulayers", "99", "--contextsize", "4096", "--quiet",
     "--remotetunnel"],
    ["--smartcontext", "--noshift", "--nofastforward", "--jinja", "--lowvram"],
    ["--hordeconfig", "mymodel", "16", "512", "--hordekey", "k", "--hordeworkername", "w", "--hordemodelname", "m",
     "--hordemaxctx", "2048", "--hordegenlen", "120"],
    ["--admin"],
])
def test_launch_lines_people_have_start_with_a_note_each(model_path: Path, flags: list[str]) -> None:
    result = warren("--check", str(model_path), *flags, "--port", str(free_port()))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "error:" not in result.stderr
    notes = [line for line in result.stderr.splitlines() if line.startswith(("note: --", "warning: --"))]
    honoured = ("--contextsize", "--gpulayers", "--multiuser", "--quiet", "--noshift")  # these need no note
    named = {f for f in flags if f.startswith("--") and f not in honoured}
    for flag in named:
        assert any(line.split(":", 2)[1].strip().startswith(flag.replace("--usecublas", "--usecuda")) for line in notes), \
            (flag, notes)


@pytest.mark.parametrize(("flag", "words"), [
    (["--mmproj", "x.gguf"], "--mmproj is a KoboldCpp flag warren does not implement: vision models"),
    (["--draftmodel", "x.gguf"], "--draftmodel is a KoboldCpp flag warren does not implement: speculative decoding"),
])
def test_flags_whose_absence_would_change_the_result_are_refused(flag: list[str], words: str) -> None:
    assert_clean_error(warren(*flag), words)


def test_analyze(model_path: Path) -> None:
    result = warren("--analyze", str(model_path))
    assert result.returncode == 0, result.stderr
    assert "general.architecture = 'llama'" in result.stdout
    assert "tokenizer.ggml.tokens = [49152 × STRING]" in result.stdout
    assert "memory estimate at context 8192" in result.stdout
    assert "vocabulary" in result.stdout and "sliding window" not in result.stdout  # every layer full


def test_analyze_and_check_say_what_the_sliding_window_saves(gemma_path: Path, tmp_path: Path) -> None:
    result = warren("--analyze", str(gemma_path), "--contextsize", "4096")
    assert result.returncode == 0, result.stderr
    # 15 full-size caches of 4096 cells against 1024 (window + micro-batch): 15 × 3072 × 1 KiB.
    assert ("sliding window: 15 of 18 layers attend to a 512-token window: a window-sized cache would save "
            "45.0 MiB of KV cache") in result.stdout
    (tmp_path / "gemma.gguf").symlink_to(gemma_path)
    result = warren("--check", "--nomodel", "--models-dir", str(tmp_path), "--contextsize", "4096", "--port",
                    str(free_port()))
    assert result.returncode == 0, result.stderr
    assert "KV 72.0 MiB" in result.stdout and "would save 45.0 MiB" in result.stdout


def test_config_file_and_command_line_precedence(model_path: Path, tmp_path: Path) -> None:
    config = tmp_path / "my.kcpps"
    config.write_text(json.dumps({"model_param": str(model_path), "contextsize": 4096, "threads": 1,
                                  "blasbatchsize": 256, "sdmodel": "x"}))
    result = warren("--check", "--config", str(config), "--threads", "2", "--port", str(free_port()))
    assert result.returncode == 0, result.stderr
    assert "context 4096, threads 2/2, batch 256" in result.stdout  # --threads typed here wins
    assert "warren does not implement are ignored: sdmodel" in result.stderr
    # A .kcpps given as the positional model is loaded as the config (KoboldCpp's drag-and-drop rule).
    result = warren("--check", str(config), "--port", str(free_port()))
    assert result.returncode == 0 and "context 4096, threads 1/1" in result.stdout


def test_exportconfig_round_trip(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "saved"
    result = warren(str(model_path), "--contextsize", "1024", "--flashattention", "--exportconfig", str(out))
    assert result.returncode == 0, result.stderr
    data = json.loads((tmp_path / "saved.kcpps").read_text())
    assert data["contextsize"] == 1024 and data["flashattention"] is True and data["model_param"] == str(model_path)
    result = warren("--check", "--config", str(tmp_path / "saved.kcpps"), "--port", str(free_port()))
    assert result.returncode == 0 and "context 1024" in result.stdout and "flash attention on" in result.stdout


def test_check_prints_the_catalog_plan(model_path: Path, tmp_path: Path) -> None:
    (tmp_path / "small.kcpps").write_text(json.dumps({"model_param": str(model_path), "contextsize": 512}))
    (tmp_path / "big.kcpps").write_text(json.dumps({"model_param": str(model_path), "contextsize": 65536}))
    (tmp_path / "bad.kcpps").write_text("{")
    result = warren("--check", "--nomodel", "--models-dir", str(tmp_path), "--memory-budget", "1G",
                    "--port", str(free_port()))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "memory budget: 1,024.0 MiB" in out
    assert "small" in out and "big" in out and "bad" in out and "INVALID" in out
    assert "does NOT fit the budget on its own" in out  # big: a 64k context of KV cache
    assert "fit together in the budget: small" in out
    assert "warning: model 'bad'" in result.stderr


def test_pinned_models_over_the_budget_are_a_startup_error(model_path: Path, tmp_path: Path) -> None:
    catalog = tmp_path / "c.toml"
    catalog.write_text(f'[models.one]\nmodel = "{model_path}"\npinned = true\n'
                       f'[models.two]\nmodel = "{model_path}"\npinned = true\n')
    assert_clean_error(warren("--check", "--nomodel", "--catalog", str(catalog), "--memory-budget", "300M",
                              "--port", str(free_port())), "the pinned models (one, two) need about")


def test_active_model_over_the_budget_is_a_startup_error(model_path: Path) -> None:
    need = estimate_memory(read_gguf(model_path), context_size=8192).total // 2**20  # the default context
    assert_clean_error(warren("--check", str(model_path), "--memory-budget", "100M", "--port", str(free_port())),
                       f"needs about {need} MiB, more than the memory budget of 100 MiB")


def test_the_default_model_over_the_budget_of_a_models_dir_points_at_nomodel(tmp_path: Path) -> None:
    r = warren("--check", "--models-dir", str(tmp_path), "--memory-budget", "100M", "--port", str(free_port()))
    assert_clean_error(r, "more than the memory budget of 100 MiB")
    assert "--nomodel" in r.stderr


def test_help_prints_the_flags() -> None:
    result = warren("--help")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "--memory-budget" in result.stdout and "75% of" in result.stdout
    assert "--contextsize" in result.stdout
