"""Ray is optional (``pip install 'warren[ray]'``): never imported without ``--cluster``, and a cluster that
cannot be joined is a start-up error, not minutes of retries."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT, free_port
from tests.unit.test_cli import assert_clean_error, warren


def test_the_supervisor_does_not_import_ray_without_cluster() -> None:
    code = ("import sys, warren.cli.main, warren.api.app, warren.pool.pool, warren.worker.local; "
            "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_cluster_nobody_answers_for_is_a_clean_start_up_error() -> None:
    port = free_port()  # free: nothing listens there
    result = warren("--nomodel", "--cluster", f"127.0.0.1:{port}", "--port", str(free_port()))
    assert_clean_error(result, f"cannot join the Ray cluster at 127.0.0.1:{port}: nothing answers there")
    assert "ray start --head" in result.stderr
