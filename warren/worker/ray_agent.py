"""The node's side of the Ray launcher: a Ray actor that runs one worker process and answers for it.

The Ray launcher (``warren/worker/ray_launcher.py``) creates one ``WorkerAgent`` actor per worker, on the
node the pool chose, holding the worker's reservation in Ray's resources. The agent:

- **starts the worker** exactly as the local launcher does — ``python -m warren.worker.child --fd N
  --parent PID --engine ENGINE``, a fresh interpreter in a session of its own, with the environment of
  ``warren/worker/environment.py`` — except that fd N is a TCP connection to the supervisor's
  rendezvous (``warren/worker/rendezvous.py``) instead of a socketpair: the agent connects, sends the
  worker's token, turns Nagle's algorithm off, and hands the socket over. The frames then go straight
  between the supervisor and the worker; the agent is never in their path.
- **is the worker's parent**, so ``--parent`` names the agent: the worker is SIGKILLed by the kernel when
  the agent ends (``PR_SET_PDEATHSIG``), whether the launcher ends it (``ray.kill`` once the worker is
  done), the supervisor dies (its actors are owned by it, and Ray ends them with their owner; the worker
  also sees its channel's EOF), or the node goes down.
- **reports on it**, for the supervisor's ``WorkerProcess``: its exit status and last output lines
  (``wait``, which blocks in one of the actor's threads until the worker ends), its process state for the
  heartbeat (``probe``), its footprint measured here on its node (``measure``: PSS of the worker and of
  the agent itself — the agent is memory this model costs the node — plus NVML's GPU memory for the
  worker), and signals (``signal``).

Nothing here imports Ray or ``llama_cpp``: the launcher makes the class an actor, and the engine is the
worker process's. ``files_here`` is the task the launcher runs on each node to learn which model files it
has.
"""

from __future__ import annotations

import collections
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Collection
from pathlib import Path

import warren
from warren.worker.environment import worker_environment
from warren.worker.gpu_memory import GpuMemory
from warren.worker.liveness import ProcessSample, read_proc_stat
from warren.worker.local import OUTPUT_LINES, measure_footprint

CONNECT_TIMEOUT = 10.0  # seconds to reach the supervisor's rendezvous
AGENT_THREADS = 4  # the actor's concurrency: ``wait`` holds one thread for the worker's life; the rest answer


def files_here(paths: Collection[str]) -> list[str]:
    """Which of ``paths`` are files on this node (a Ray task the launcher runs on each node)."""
    return [path for path in paths if os.path.isfile(path)]


class WorkerAgent:
    def __init__(self) -> None:
        self.process: subprocess.Popen[bytes] | None = None
        self.output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
        self.gpu = GpuMemory()
        self._reader: threading.Thread | None = None

    def start(self, host: str, port: int, token: bytes, engine: str) -> int:
        """Connect to the supervisor, present ``token``, start the worker on that connection; its pid."""
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
        try:
            sock.settimeout(None)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # frames are small: send each at once
            sock.sendall(token)
            env = worker_environment()
            # The worker imports the same warren as this agent (and, in tests, fake engines beside it).
            root = str(Path(warren.__file__).resolve().parent.parent)
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
            self.process = subprocess.Popen(
                [sys.executable, "-m", "warren.worker.child", "--fd", str(sock.fileno()), "--parent",
                 str(os.getpid()), "--engine", engine],
                pass_fds=(sock.fileno(),), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, start_new_session=True, env=env)
        finally:
            sock.close()  # the worker has its own copy
        self._reader = threading.Thread(target=self._read_output, name="warren-output", daemon=True)
        self._reader.start()
        return self.process.pid

    def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line.decode("utf-8", "replace").rstrip())

    def wait(self) -> tuple[int, list[str]]:
        """Block until the worker ends: its exit status (``-N`` for signal N) and its last output lines."""
        assert self.process is not None
        code = self.process.wait()
        if self._reader is not None:
            self._reader.join(1.0)  # the lines it wrote last (a crash's last words)
        return code, list(self.output)

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def probe(self) -> ProcessSample | None:
        return read_proc_stat(self.process.pid) if self.process is not None else None

    def measure(self) -> tuple[int, int]:
        """(PSS of the worker and of this agent, GPU memory of the worker) in bytes; (0, 0) once it ended."""
        if self.process is None or self.process.poll() is not None:
            return 0, 0
        pid = self.process.pid
        return measure_footprint(pid) + measure_footprint(os.getpid()), self.gpu.by_pid().get(pid, 0)
