"""The supervisor's modules never import llama_cpp (only warren/worker/engine.py may)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

SUPERVISOR_MODULES = ["warren.cli.main", "warren.api.app", "warren.pool.pool", "warren.worker.handle",
                      "warren.worker.launcher", "warren.worker.local", "warren.worker.channel", "warren.clock",
                      "warren.validation", "warren.gguf.estimate", "warren.cli.report",
                      # the test's in-process launcher runs workers in a supervisor's process
                      "tests.fakes.inprocess", "tests.fakes.fake_engine"]


def test_supervisor_modules_do_not_load_llama_cpp() -> None:
    code = ("import sys\n" + "".join(f"import {m}\n" for m in SUPERVISOR_MODULES)
            + "print(sorted(m for m in sys.modules if m.startswith('llama_cpp')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_check_detects_an_import() -> None:
    # The same probe on the engine module does see llama_cpp, so the test above can fail.
    code = "import sys, warren.worker.engine; print('llama_cpp' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
