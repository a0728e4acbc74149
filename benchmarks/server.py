"""A warren server of a benchmark's own: a free port, the process, and the wait until it answers.

Shared by the benchmarks that time a real server (``bench_compute``, ``bench_conversation``, ``bench_pool``,
``bench_generation``), so each starts it the same way: from this checkout, its output discarded.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0  # seconds for the server to answer /ping


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(*args: str) -> tuple[subprocess.Popen[bytes], str]:
    """``python -m warren ARGS --port P``; the process and its URL once it answers (it is killed if it does not)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "warren", *args, "--port", str(port)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}/ping", timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)  # polling a process that is starting: there is no event to wait on
    proc.kill()
    raise RuntimeError("warren did not start")
