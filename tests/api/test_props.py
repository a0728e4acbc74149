"""What KoboldCpp's clients ask on connect besides generation: llama.cpp's ``/props`` (SillyTavern reads the
context size and chat template from it) and ``/api/extra/preloadstory`` (KoboldAI Lite, every connect)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import ROOT, Server, Servers

MODEL = "SmolLM2-135M-Instruct.Q4_1"


def test_props_reads_like_llama_cpp(server: Server) -> None:
    props = httpx.get(f"{server.url}/props", timeout=10).json()
    assert props["default_generation_settings"]["n_ctx"] == 2048 and props["n_ctx"] == 2048
    assert props["total_slots"] == 1 and props["modalities"] == {"vision": False, "audio": False}
    assert props["model_path"] == f"{MODEL}.gguf"  # the file's name only, never where it is kept
    assert "<|im_start|>" in props["chat_template"] and props["build_info"].startswith("warren ")
    assert httpx.get(f"{server.url}/m/{MODEL}/props", timeout=10).json()["n_ctx"] == 2048


def test_preloadstory_is_empty_without_the_flag(server: Server) -> None:
    r = httpx.get(f"{server.url}/api/extra/preloadstory", timeout=10)
    assert r.status_code == 200 and r.json() == {}


def test_preloadstory_serves_the_story_as_saved(servers: Servers, tmp_path: Path) -> None:
    story = {"gamestarted": True, "prompt": "The dragon woke.", "memory": "A fantasy tale.", "actions": ["It roared."]}
    path = tmp_path / "story.json"
    path.write_text(json.dumps(story))
    srv = servers.start("--nomodel", "--preloadstory", str(path))
    r = httpx.get(f"{srv.url}/api/extra/preloadstory", timeout=10)
    assert r.status_code == 200 and r.json() == story


def test_a_bad_preloadstory_stops_start_up_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "list.json").write_text("[1, 2]")
    for value, words in ((str(tmp_path / "missing.json"), "no such file"),
                         (str(tmp_path / "list.json"), "a story is a JSON object")):
        out = subprocess.run([sys.executable, "-m", "warren", "--nomodel", "--preloadstory", value], cwd=ROOT,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 2 and f"error: --preloadstory {value}: {words}" in out.stderr + out.stdout
