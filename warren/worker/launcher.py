"""The launcher seam: the one interface through which the supervisor gets a worker (DESIGN §8).

A ``Launcher`` starts a worker for a model's settings, on a node, and gives back two things: a ``FrameChannel``
(``warren/worker/channel.py``: frames both ways, as always) and a ``WorkerProcess``, the supervisor's
view of the thing that runs — how to end it (``terminate``, ``kill``), how it ended (``returncode``,
``wait``), its last lines of output, and its state for the heartbeat (``probe``). ``measure`` gives
the workers' footprints (``Footprint``: PSS and GPU memory). Everything above — the handshake, requests,
heartbeat, the stop escalation and what an exit means (``classify_exit``) — is ``WorkerHandle``'s, and
the same for every launcher; the pool and the API never know which launcher runs.

Implementations:
- ``warren/worker/local.py``: ``LocalLauncher``, a subprocess per worker on this machine (production).
- ``tests/fakes/inprocess.py``: ``InProcessLauncher``, the real child-side ``Worker`` with a fake engine
  on threads of the test process over a real socketpair; faults ("died by signal N") are injected
  without sending a signal to the test runner.
- ``warren/worker/ray_launcher.py``: ``RayLauncher``, a worker per Ray actor on the nodes of a cluster
  (``warren --cluster``); Ray is imported only there.

Nodes: a launcher that ``places`` workers (Ray; the in-process fake when given nodes) reports the nodes it
can start workers on (``nodes``: each one's memory budget, compute threads, and which model files it
has), and the pool chooses one for each load (``warren/pool/placement.py``). The local launcher has one
node, this machine (``LOCAL``), whose budget is the pool's own ``--memory-budget``.

``returncode`` follows ``asyncio.subprocess.Process``: ``None`` while running, the exit status, or
``-N`` for a worker ended by signal N. A launcher whose workers end otherwise maps its ending onto
that, so the classification below stays one table; a worker lost with its node has no exit status of
its own: ``lost`` says why, and the end is ``ExitKind.LOST``.
"""

from __future__ import annotations

import collections
import enum
import signal
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from warren.errors import describe_exit, unrunnable_cause
from warren.settings import ModelSettings
from warren.worker.channel import FrameChannel
from warren.worker.liveness import ProcessSample


class ExitKind(enum.StrEnum):
    """How a worker ended, as ``/api/pool`` shows it (``last_exit_kind``)."""

    REQUESTED = "requested"  # we stopped it (unload, eviction, keep-alive, shutdown)
    LOAD_FAILED = "load_failed"  # it refused the model (set by the instance: the worker lives on)
    CRASHED = "crashed"  # an exit status, or a signal such as SIGSEGV or SIGABRT
    OOM_SUSPECTED = "oom_suspected"  # SIGKILL that warren did not send: the kernel's OOM killer, usually
    HUNG = "hung"  # silent past the heartbeat's limit, or no answer to Load in time: killed
    FROZEN = "frozen"  # stopped (SIGSTOP, a debugger) and killed by the heartbeat
    UNRUNNABLE = "unrunnable"  # SIGILL or SIGBUS: the engine cannot run on this machine
    LOST = "lost"  # its node left the cluster: nothing the model or a request did (not counted as a crash)


LOCAL = "local"  # the node of a launcher that places nothing: this machine


@dataclass(frozen=True, slots=True)
class Node:
    """A node a placing launcher can start workers on, as it reports it (``Launcher.nodes``)."""

    id: str
    memory: int  # bytes the pool may reserve there (its budget)
    threads: int = 0  # compute threads the pool may reserve there; 0: threads are not reserved on it
    address: str = ""  # where it is, for people (an IP address)
    files: frozenset[str] = frozenset()  # which of the model paths asked about exist there


@dataclass(frozen=True, slots=True)
class Footprint:
    pss: int  # private + proportional shared bytes (RSS where PSS cannot be read)
    gpu: int = 0  # GPU memory the driver reports for the worker

    @property
    def total(self) -> int:
        return self.pss + self.gpu


class WorkerProcess(Protocol):
    pid: int  # the process id on its node (logs, status, ``prefault_after`` of a load on the same node)
    node: str  # the node it runs on (``LOCAL`` for a launcher that places nothing)
    output: collections.deque[str]  # the last lines the worker wrote (llama.cpp's log), bounded
    lost: str  # why it is gone without an exit status of its own (its node left the cluster); "" otherwise

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int:
        """Return the exit status once the worker has ended (see the module docstring)."""

    def terminate(self) -> None:
        """Ask it to end (SIGTERM); nothing if it has ended."""

    def kill(self) -> None:
        """End it now (SIGKILL, which also ends a stopped process); nothing if it has ended."""

    def probe(self) -> ProcessSample | None:
        """Its process state for the heartbeat's verdict (``warren/worker/liveness.py``); None: unknown."""

    async def release(self) -> None:
        """Free what the launcher keeps for it (its output reader); called once it has ended."""


class Launcher(Protocol):
    default_engine: str  # the engine a warm spare is started with; only a load with this engine adopts it
    # Whether workers are placed on nodes the launcher reports (``nodes``), each with its own budget.
    places: bool

    async def start(self, settings: ModelSettings, node: str = LOCAL, reserve: int = 0
                    ) -> tuple[WorkerProcess, FrameChannel]:
        """Start a worker for ``settings`` (its ``engine`` above all; the model is loaded later, by a
        ``Load`` frame) on ``node``, holding ``reserve`` bytes there where the launcher keeps its own
        books (Ray's resources). Returns once the channel is open; the worker's ``Hello`` comes on it."""

    def nodes(self, paths: Collection[str]) -> list[Node]:
        """The nodes workers can be placed on now, each with which of ``paths`` (model files) it has.
        Blocking (it may ask the nodes): call it in a thread. A launcher that places nothing returns []."""

    def measure(self, workers: Sequence[WorkerProcess]) -> list[Footprint]:
        """Footprints of ``workers``, in order; 0 bytes for one that has ended. Blocking (it reads the
        kernel's and the GPU driver's figures): call it in a thread."""

    @property
    def reports_gpu(self) -> bool:
        """Whether footprints include GPU memory (a driver that reports it is present)."""

    async def close(self) -> None:
        """Let go of what the launcher holds beyond its workers (a cluster connection); the pool calls it
        last, once every worker has stopped."""


def classify_exit(returncode: int | None, *, requested: bool, protocol_error: str = "", killed_for: str = "",
                  killed_kind: ExitKind = ExitKind.HUNG, lost: str = "") -> tuple[ExitKind, str]:
    """What a worker's end means, and how to say it: ``(kind, how)``.

    ``requested``: the supervisor was stopping it. ``lost``: it went with its node (the launcher says
    how). ``protocol_error``: it sent garbage and was killed for it. ``killed_for``/``killed_kind``: the
    heartbeat or the load timeout killed it (hung, frozen). Otherwise the exit status decides: SIGILL and
    SIGBUS are ``unrunnable`` (no request provokes them: the engine cannot run here), a SIGKILL nobody
    here sent is ``oom_suspected``, anything else ``crashed``."""
    if requested:
        return ExitKind.REQUESTED, "stopped"
    if lost:
        return ExitKind.LOST, lost
    if protocol_error:
        return ExitKind.CRASHED, protocol_error
    if killed_for:
        return killed_kind, killed_for
    how = describe_exit(returncode)
    if cause := unrunnable_cause(returncode):
        return ExitKind.UNRUNNABLE, f"{how}: {cause}"
    if returncode == -signal.SIGKILL:
        return ExitKind.OOM_SUSPECTED, f"{how} (not sent by warren: out of memory?)"
    return ExitKind.CRASHED, how
