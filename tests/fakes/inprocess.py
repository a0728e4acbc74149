"""The in-process launcher: workers on threads of the test process (``warren/worker/launcher.py``).

Each worker is the real child-side ``Worker`` (``warren/worker/child.py``) with a fake engine
(``tests/fakes/fake_engine.py``) on three threads — reader, main, tokens, as in a worker process —
talking to the supervisor's real ``WorkerHandle`` over a real ``socketpair``. So the frame codec, both
sides' request logic, the heartbeat's Ping/Pong, Cancel and EOF all run as in production; only the
process is missing. Starting one takes microseconds instead of an interpreter's start.

Faults are injected without signals (a real one would kill the test runner):
- ``worker.die(signal.SIGSEGV)`` from a test: the worker "was killed by SIGSEGV" — its ``returncode`` is
  ``-11`` and the supervisor sees its channel end, exactly what it sees of a process that died so;
- an engine's own faults (``engine.faults``: ``signal``, ``illegal_instruction``, ``block``,
  ``garbage``) are rerouted here, so the same fake engines serve both launchers;
- ``terminate``/``kill`` from the supervisor's stop escalation end it the same way (SIGTERM, SIGKILL);
- ``reached(mark)``: an event the test awaits when the engine passes a point (``faults.reached``), in
  place of polling; ``hold(gate)`` makes the engine wait at that point until ``open(gate)``.

Given ``nodes``, it is a *placing* launcher, as the Ray launcher is: it reports those nodes (and which
model files each has, ``files``), starts each worker on the node the pool chose, records what it was
asked (``starts``), and ``lose_node(id)`` takes a node away with its workers, as a cluster does when a
machine dies: they end without an exit status of their own (``lost``).

An engine that would import ``llama_cpp`` is refused: the test process is a supervisor.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import signal
import socket
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from warren.errors import WorkerNotPlaced
from warren.settings import ModelSettings
from warren.worker import protocol as p
from warren.worker.channel import FrameChannel
from warren.worker.child import FrameSocket, Worker, load_engine
from warren.worker.launcher import LOCAL, Footprint, Node, WorkerProcess
from warren.worker.liveness import ProcessSample

FIRST_ID = 10_000_000  # above any Linux pid (PID_MAX_LIMIT is 2**22): a fake id never names a real process
OUTPUT_LINES = 200


class Died(BaseException):
    """Unwinds an engine's thread once its worker is dead (not an ``Exception``: nothing may catch it)."""


class _Lines:
    """A text stream that appends whole lines to a worker's output ring (its stderr, in a process)."""

    def __init__(self, ring: collections.deque[str]) -> None:
        self.ring = ring
        self.partial = ""

    def write(self, text: str) -> int:
        *lines, self.partial = (self.partial + text).split("\n")
        self.ring.extend(lines)
        return len(text)

    def flush(self) -> None:
        pass


class InProcessFaults:
    """What an engine's faults do in a worker without a process of its own."""

    def __init__(self, worker: InProcessWorker) -> None:
        self.worker = worker

    def signal(self, sig: int) -> None:
        self.worker.die(sig)
        raise Died

    def illegal_instruction(self) -> None:
        self.signal(signal.SIGILL)

    def block(self) -> None:
        self.worker.released.wait()
        raise Died

    def garbage(self) -> None:
        self.worker.sock.sendall(b"\x00\x00\x00\x05garbage!")
        self.block()

    def reached(self, mark: str) -> None:
        self.worker.mark(mark)

    def gate(self, name: str) -> None:
        """Wait here while the test holds the gate ``name`` (it is told, as by ``reached``)."""
        gate = self.worker.gates.get(name)
        if gate is None:
            return
        self.worker.mark(name)
        gate.wait()
        if self.worker.returncode is not None:
            raise Died


class InProcessWorker:
    """One worker's threads, and what a process would tell about it (``WorkerProcess``)."""

    def __init__(self, pid: int, sock: socket.socket, engine: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.pid = pid
        self.node = LOCAL
        self.lost = ""
        self.sock = sock
        self.engine = engine
        self.output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
        self.sample: ProcessSample | None = ProcessSample("S", 0)  # what the heartbeat's probe reads
        self.ignores_sigterm = False
        self.released = threading.Event()  # set when it ends: a blocked engine thread unwinds
        self._returncode: int | None = None
        self._lock = threading.Lock()
        self._loop = loop
        self._ended = asyncio.Event()
        self._marks: dict[str, asyncio.Event] = {}
        self.gates: dict[str, threading.Event] = {}  # held gates: the engine waits at them until opened
        self._running = 3
        self.frames = FrameSocket(sock)
        self.worker = Worker(self.frames, engine, on_eof=self._eof, log=_Lines(self.output))  # type: ignore[arg-type]

    def begin(self, engine_spec: str) -> None:
        self.frames.send(p.Hello(pid=self.pid, engine=engine_spec))  # what the child's main() sends first
        for name, target in (("reader", self.worker.read_loop),
                             ("main", lambda: self.worker.serve(self.worker.inbox)),
                             ("tokens", lambda: self.worker.serve(self.worker.tokens))):
            threading.Thread(target=self._run, args=(target,), name=f"inproc-{self.pid}-{name}", daemon=True).start()

    # -- WorkerProcess ------------------------------------------------------------------------------
    @property
    def returncode(self) -> int | None:
        return self._returncode

    async def wait(self) -> int:
        await self._ended.wait()
        assert self._returncode is not None
        return self._returncode

    def terminate(self) -> None:
        if not self.ignores_sigterm:
            self.die(signal.SIGTERM)

    def kill(self) -> None:
        self.die(signal.SIGKILL)

    def probe(self) -> ProcessSample | None:
        return self.sample

    async def release(self) -> None:
        pass  # its threads end by themselves once it has ended

    # -- faults and marks -----------------------------------------------------------------------------
    def die(self, sig: int) -> None:
        """Killed by ``sig``: the supervisor sees the channel end and ``returncode == -sig``."""
        self._end(-sig)
        with contextlib.suppress(OSError):  # closed already
            self.sock.shutdown(socket.SHUT_RDWR)

    def mark(self, name: str) -> None:
        """Called from an engine thread: wakes ``reached(name)``."""
        self._loop.call_soon_threadsafe(self._mark_event(name).set)

    async def reached(self, name: str) -> None:
        await self._mark_event(name).wait()

    def hold(self, gate: str) -> None:
        self.gates[gate] = threading.Event()

    def open(self, gate: str) -> None:
        self.gates.pop(gate).set()

    def _mark_event(self, name: str) -> asyncio.Event:
        return self._marks.setdefault(name, asyncio.Event())

    # -- threads ----------------------------------------------------------------------------------------
    def _eof(self) -> None:
        """The reader thread saw the channel end: a worker process exits with status 0 here."""
        self._end(0)
        self.worker.inbox.put(None)
        self.worker.tokens.put(None)

    def _end(self, returncode: int) -> None:
        with self._lock:
            if self._returncode is not None:
                return
            self._returncode = returncode
        self.released.set()
        for gate in list(self.gates.values()):
            gate.set()  # a dead worker's engine thread unwinds
        self._loop.call_soon_threadsafe(self._ended.set)

    def _run(self, target: Callable[[], None]) -> None:
        try:
            target()
        except Died:
            pass
        except OSError as exc:  # the channel broke under a send: a worker process would end on the EOF that follows
            print(f"inproc worker: channel broken: {exc}", file=self.worker.log)
        finally:
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:  # nobody uses the socket any more
                self.frames.file.close()
                self.sock.close()


FAKE = "tests.fakes.fake_engine:fake"


class InProcessLauncher:
    """``Launcher`` for tests. ``workers``: every worker it started, in order. ``footprint`` decides what
    ``measure`` reports (0 by default: reservations then stay at the estimates). ``engines`` runs a fake
    engine in place of another: ``{"llama": FAKE}`` serves a real catalog (real GGUF files, their
    estimates) with fake workers. ``nodes`` makes it place workers (module docstring); ``files``: the
    model paths each node has (every path on every node when None)."""

    def __init__(self, footprint: Callable[[InProcessWorker], Footprint] | None = None, *,
                 engines: Mapping[str, str] | None = None, default_engine: str = FAKE,
                 nodes: Sequence[Node] | None = None, files: Mapping[str, Collection[str]] | None = None) -> None:
        self.default_engine = default_engine
        self.engines = dict(engines or {})
        self.workers: list[InProcessWorker] = []
        self.footprint = footprint or (lambda worker: Footprint(0))
        self.reports_gpu = False
        self.places = nodes is not None
        self.cluster = {n.id: n for n in nodes or ()}
        self.files = files
        self.starts: list[tuple[str, str, int]] = []  # (model, node, reserve) of every start, in order
        self._ids = itertools.count(FIRST_ID)
        self._more: asyncio.Event | None = None

    def nodes(self, paths: Collection[str]) -> list[Node]:
        return [Node(n.id, n.memory, n.threads, n.address,
                     frozenset(p for p in paths if self.files is None or p in self.files.get(n.id, ())))
                for n in self.cluster.values()]

    def lose_node(self, node: str) -> None:
        """The node leaves the cluster: it is no longer reported, and its workers end with it (no exit
        status: SIGKILL is what their processes would get)."""
        del self.cluster[node]
        for worker in self.workers:
            if worker.node == node and worker.returncode is None:
                worker.lost = f"its node {node} left the cluster"
                worker.die(signal.SIGKILL)

    async def start(self, settings: ModelSettings, node: str = LOCAL, reserve: int = 0
                    ) -> tuple[InProcessWorker, FrameChannel]:
        spec = self.engines.get(settings.engine, settings.engine)
        if spec == "llama" or spec.startswith("warren.worker.engine"):
            raise ValueError("the in-process launcher runs fake engines only: llama_cpp must stay out of the "
                             "supervisor's process")
        if self.places and node not in self.cluster:
            raise WorkerNotPlaced(f"no worker for model {settings.name!r} could be placed: node {node} is not "
                                  "in the cluster", model=settings.name)
        self.starts.append((settings.name, node, reserve))
        engine = load_engine(spec)
        parent, child = socket.socketpair()
        worker = InProcessWorker(next(self._ids), child, engine, asyncio.get_running_loop())
        worker.node = node
        engine.faults = InProcessFaults(worker)  # type: ignore[attr-defined]
        worker.begin(settings.engine)
        self.workers.append(worker)
        if self._more is not None:
            self._more.set()
            self._more = None
        return worker, await FrameChannel.over_socket(parent)

    async def started(self, count: int) -> InProcessWorker:
        """The ``count``-th worker started (1 is the first), once it has been."""
        while len(self.workers) < count:
            self._more = self._more or asyncio.Event()
            await self._more.wait()
        return self.workers[count - 1]

    def measure(self, workers: Sequence[WorkerProcess]) -> list[Footprint]:
        return [self.footprint(w) if w.returncode is None else Footprint(0)  # type: ignore[arg-type]
                for w in workers]

    async def close(self) -> None:
        pass

