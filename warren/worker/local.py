"""The local launcher: one subprocess per worker on this machine (``warren/worker/launcher.py``).

A worker is ``python -m warren.worker.child --fd N --parent PID --engine ENGINE``:
- a fresh interpreter (spawn semantics, never fork: no supervisor thread, lock or CUDA state inherited);
- its channel is one end of a ``socketpair`` passed as fd N (``pass_fds``), not stdout, which native
  code may write to;
- in a session of its own (``start_new_session``), so Ctrl-C in the terminal reaches the supervisor
  only, which stops its workers in order; the child asks the kernel to kill it if the supervisor dies
  (``PR_SET_PDEATHSIG``, in ``warren/worker/child.py``), given the supervisor's pid as ``--parent``;
- with the environment of ``warren/worker/environment.py``;
- its stdout and stderr (llama.cpp's log) go to one pipe, whose last ``OUTPUT_LINES`` lines are kept.

Footprints: PSS from ``/proc/PID/smaps_rollup`` (RSS where it cannot be read), plus the GPU memory NVML
reports for the pid (``warren/worker/gpu_memory.py``), read once per batch of workers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import socket
import sys
from collections.abc import Collection, Sequence

import psutil

from warren.settings import ModelSettings
from warren.worker.channel import FrameChannel
from warren.worker.environment import worker_environment
from warren.worker.gpu_memory import GpuMemory
from warren.worker.launcher import LOCAL, Footprint, Node, WorkerProcess
from warren.worker.liveness import ProcessSample, read_proc_stat

log = logging.getLogger(__name__)

OUTPUT_LINES = 200  # enough for llama.cpp's load log and a crash's last words, small enough to keep per model


def measure_footprint(pid: int) -> int:
    """Private + proportional shared memory of one process (PSS), else RSS; 0 when it is gone.

    ``/proc/PID/smaps_rollup`` is summed by the kernel; psutil's ``memory_full_info`` parses the whole
    ``smaps`` in Python, which costs tens of milliseconds of CPU for a process with a model mapped."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0


class LocalWorker:
    """One worker subprocess: its process, and the task that keeps its output."""

    def __init__(self, process: asyncio.subprocess.Process, label: str) -> None:
        self.process = process
        self.pid = process.pid
        self.node = LOCAL
        self.lost = ""  # a local worker always has an exit status
        self.output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
        self._reader = asyncio.get_running_loop().create_task(self._read_output(label), name=f"output-{label}")

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    async def wait(self) -> int:
        return await self.process.wait()

    def terminate(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()

    def probe(self) -> ProcessSample | None:
        return read_proc_stat(self.pid)

    async def release(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    async def _read_output(self, label: str) -> None:
        assert self.process.stdout is not None
        debug = log.isEnabledFor(logging.DEBUG)
        while line := await self.process.stdout.readline():
            text = line.decode("utf-8", "replace").rstrip()
            self.output.append(text)
            if debug:
                log.debug("worker model=%s: %s", label, text)


class LocalLauncher:
    default_engine = "llama"
    places = False  # one node, this machine: the pool's --memory-budget is its budget

    def __init__(self, gpu: GpuMemory | None = None) -> None:
        self.gpu = gpu or GpuMemory()

    def nodes(self, paths: Collection[str]) -> list[Node]:
        return []

    async def start(self, settings: ModelSettings, node: str = LOCAL, reserve: int = 0
                    ) -> tuple[LocalWorker, FrameChannel]:
        parent_sock, child_sock = socket.socketpair()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "warren.worker.child", "--fd", str(child_sock.fileno()),
                "--parent", str(os.getpid()), "--engine", settings.engine,
                pass_fds=(child_sock.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops workers in order
                env=worker_environment(),
            )
        except BaseException:
            parent_sock.close()
            raise
        finally:
            child_sock.close()
        worker = LocalWorker(process, settings.name)
        return worker, await FrameChannel.over_socket(parent_sock)

    def measure(self, workers: Sequence[WorkerProcess]) -> list[Footprint]:
        gpu = self.gpu.by_pid() if workers else {}
        return [Footprint(measure_footprint(w.pid), gpu.get(w.pid, 0)) if w.returncode is None else Footprint(0)
                for w in workers]

    @property
    def reports_gpu(self) -> bool:
        return self.gpu.available

    async def close(self) -> None:
        pass
