"""The Ray launcher: each model's worker on a node of a Ray cluster (``warren --cluster ADDRESS``).

The third implementation of the launcher seam (``warren/worker/launcher.py``), and the only module that
imports Ray on the supervisor's side: ``warren/cli/main.py`` imports it only for ``--cluster``. warren
keeps its own memory-aware pool; Ray places the workers and reaches the nodes.

::

    supervisor (this process: a Ray driver)                      a node of the cluster
    Pool ── start(settings, node, reserve) ─▶ RayLauncher ──Ray──▶ WorkerAgent actor (warren/worker/ray_agent.py)
      │        (the pool chose the node)      │ actor on that node,        │ connects back, sends the token,
      │                                       │ holding the reservation    │ starts the worker on that socket
    WorkerHandle ◀── FrameChannel ◀── Rendezvous (TCP, a token per worker) ◀── python -m warren.worker.child

- **Placement.** ``nodes`` reports every live node with its budget and compute threads
  (``warren/worker/ray_resources.py``) and which of the catalog's model files it has (a ``files_here``
  task on the node: "a path that exists on the node is used there"; files a node lacked are asked about
  again after ``FILES_RECHECK``). The pool picks the node (``warren/pool/placement.py``); the actor is
  pinned there (``NodeAffinitySchedulingStrategy``, not soft) and requests the worker's reservation, so
  Ray's books and warren's agree. If Ray cannot place it within ``PLACE_TIMEOUT`` (the node left, or
  something else took its resources), the start fails with ``WorkerNotPlaced`` and the next request
  places it again.
- **Frames** go straight between the supervisor and the worker over TCP (``warren/worker/rendezvous.py``);
  the frame protocol, ``WorkerHandle``, the heartbeat and the stop escalation are the local ones. Ray
  carries only the start, the signals, the exit status and the measurements.
- **Ends.** ``RayWorker`` waits on the agent's ``wait``: the worker's own exit status and last output, so
  a crash on a node is classified as a local one (``classify_exit``). If the agent itself dies, the worker
  died with it (``PR_SET_PDEATHSIG``): SIGKILL, and if its node is gone too the worker is ``lost`` (its
  node left the cluster; ``ExitKind.LOST``). Its channel is then aborted, in case the machine vanished
  without closing the connection, so the handle sees the end at once. Ray reports a dead node after its
  health checks fail (``health_check_period_ms`` × ``health_check_failure_threshold``, 15 s by default).
- **Ownership.** The actors are owned by this driver: when the supervisor dies, Ray ends them, and their
  workers with them (and each worker also sees its channel's EOF). ``release`` ends the actor once its
  worker has ended, which frees its reservation in Ray.
- **Footprints** are measured on the node by the agent (``WorkerAgent.measure``), all agents asked at
  once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Collection, Sequence
from concurrent.futures import Future
from typing import Any

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from warren.errors import ConfigError, WorkerNotPlaced
from warren.settings import ModelSettings
from warren.worker.channel import FrameChannel
from warren.worker.launcher import LOCAL, Footprint, Node, WorkerProcess
from warren.worker.liveness import ProcessSample
from warren.worker.local import OUTPUT_LINES
from warren.worker.ray_agent import AGENT_THREADS, WorkerAgent, files_here
from warren.worker.ray_resources import node_budget, node_threads, reservation
from warren.worker.rendezvous import Rendezvous

log = logging.getLogger(__name__)

PLACE_TIMEOUT = 60.0  # seconds for Ray to start the actor on its node (a fresh Ray worker process: ~1 s)
CONNECT_TIMEOUT = 15.0  # seconds for the worker's connection once the agent has started it
FILES_RECHECK = 60.0  # seconds before a node that lacked a model file is asked again
SURVEY_TIMEOUT = 30.0  # seconds for a node to say which files it has
MEASURE_TIMEOUT = 10.0
REACH_TIMEOUT = 5.0  # seconds for the cluster's head to accept a connection at start-up
KILL_GRACE = 3.0  # seconds a SIGKILL sent through the agent has before the agent itself is ended
UNAVAILABLE_RETRY = 1.0  # seconds before asking again an agent Ray says is unreachable for now


class RayWorker:
    """A worker started by an agent actor on a node: what a process would tell about it (``WorkerProcess``)."""

    def __init__(self, agent: Any, pid: int, node: str, channel: FrameChannel, launcher: RayLauncher) -> None:
        self.agent = agent
        self.pid = pid
        self.node = node
        self.lost = ""
        self.output: collections.deque[str] = collections.deque(maxlen=OUTPUT_LINES)
        self._channel = channel
        self._launcher = launcher
        self._returncode: int | None = None
        self._ended = asyncio.Event()
        self._sample: ProcessSample | None = None
        self._probing: Future[Any] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._spawn(self._watch(), "watch")

    def _spawn(self, coro: Any, what: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=f"ray-{what}-{self.pid}"))

    async def _watch(self) -> None:
        """Wait for the worker's end, as its agent reports it (or as Ray reports the agent's)."""
        while True:
            try:
                code, lines = await asyncio.wrap_future(self.agent.wait.remote().future())
                self.output.extend(lines)
                break
            except ActorUnavailableError:  # unreachable for now (Ray retries the connection): ask again
                await asyncio.sleep(UNAVAILABLE_RETRY)
            except RayError as exc:  # the agent is dead, and the worker with it (PR_SET_PDEATHSIG)
                code = -signal.SIGKILL
                if await asyncio.to_thread(self._launcher.node_alive, self.node):
                    self.output.append(f"(warren) the worker's Ray actor died: {type(exc).__name__}")
                else:
                    self.lost = f"its node {self.node} left the cluster"
                    self.output.append(f"(warren) {self.lost}")
                break
        self._returncode = code
        self._ended.set()
        self._channel.abort()  # a machine that vanished never closes the connection: end it here

    # -- WorkerProcess ------------------------------------------------------------------------------
    @property
    def returncode(self) -> int | None:
        return self._returncode

    async def wait(self) -> int:
        await self._ended.wait()
        assert self._returncode is not None
        return self._returncode

    def terminate(self) -> None:
        if self._returncode is None:
            self.agent.signal.remote(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL through the agent (so its exit status and output still come back). An agent that took the
        signal and still reports no end within ``KILL_GRACE`` is ended itself, which takes the worker along."""
        if self._returncode is None:
            sent = self.agent.signal.remote(signal.SIGKILL).future()
            self._spawn(self._kill_agent_later(sent), "kill")

    async def _kill_agent_later(self, sent: Future[Any]) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ended.wait(), KILL_GRACE)
            return
        if not sent.done() or isinstance(sent.exception(), ActorUnavailableError):
            # The agent cannot be reached: its node may be going. ``ray.kill`` would have Ray record the
            # actor as killed by us, before its health checks find the node gone, and the worker's end
            # would read as ours (a SIGKILL) instead of ``lost``. Ray's verdict on the node ends it.
            log.warning("the agent cannot be reached; waiting for Ray's verdict on its node node=%s pid=%s",
                        self.node, self.pid)
            return
        log.warning("the agent did not end its worker; ending the agent node=%s pid=%s", self.node, self.pid)
        ray.kill(self.agent)

    def probe(self) -> ProcessSample | None:
        """The worker's process state, read on its node: the last answer, and a new question for the next
        beat (the heartbeat asks once a beat; a state one beat old judges a silence as well)."""
        done = self._probing
        if done is None or done.done():
            if done is not None:
                self._sample = done.result() if done.exception() is None else None
            if self._returncode is None:
                self._probing = self.agent.probe.remote().future()
        return self._sample

    async def release(self) -> None:
        """The worker has ended: end its agent (which frees its reservation in Ray) and the watchers."""
        with contextlib.suppress(RayError):
            ray.kill(self.agent)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class RayLauncher:
    default_engine = "llama"
    places = True

    def __init__(self, host: str, *, memory_budget: str = "", owns_connection: bool = False) -> None:
        """``host``: the address workers connect back to (this machine, as Ray knows it); ``memory_budget``:
        ``--memory-budget`` for nodes that do not declare their own (``warren/worker/ray_resources.py``)."""
        self.host = host
        self.memory_budget = memory_budget
        self.owns_connection = owns_connection
        self.rendezvous = Rendezvous(host)
        self._opening: asyncio.Task[None] | None = None
        self._agent = ray.remote(max_concurrency=AGENT_THREADS, max_restarts=0)(WorkerAgent)
        self._files_task = ray.remote(num_cpus=0)(files_here)
        self._resources: dict[str, dict[str, float]] = {}  # per live node, as last surveyed
        self._files: dict[tuple[str, str], tuple[bool, float]] = {}  # (node, path) -> (there, when asked)

    @classmethod
    def connect(cls, address: str, *, memory_budget: str = "") -> RayLauncher:
        """Join the cluster at ``address`` as a driver (``ray.init``); a cluster that cannot be reached is
        a start-up error."""
        owns = not ray.is_initialized()
        if owns:
            _reachable(address)
            try:
                ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise ConfigError(f"cannot join the Ray cluster at {address}: {exc}",
                                  hint="start one with `ray start --head`, and give its address as HOST:PORT "
                                       "(or `auto` on a node of it)") from None
        return cls(ray.util.get_node_ip_address(), memory_budget=memory_budget, owns_connection=owns)

    # -- nodes ----------------------------------------------------------------------------------------
    def nodes(self, paths: Collection[str]) -> list[Node]:
        try:
            live = [n for n in ray.nodes() if n.get("Alive")]
        except RayError as exc:
            raise WorkerNotPlaced(f"the Ray cluster did not answer: {exc}") from None
        self._resources = {n["NodeID"]: dict(n.get("Resources") or {}) for n in live}
        out = []
        for n in live:
            budget = node_budget(n.get("Resources") or {}, self.memory_budget)
            if budget > 0:
                out.append(Node(n["NodeID"], budget, node_threads(n.get("Resources") or {}),
                                str(n.get("NodeManagerAddress", "")), frozenset()))
        files = self._files_on([n.id for n in out], paths)
        return [Node(n.id, n.memory, n.threads, n.address, files.get(n.id, frozenset())) for n in out]

    def _files_on(self, nodes: Sequence[str], paths: Collection[str]) -> dict[str, frozenset[str]]:
        """Which of ``paths`` each node has, asking a node (one task) only about what it was not asked
        lately: a file it had is taken to stay; one it lacked is asked about again after a while."""
        now = time.monotonic()
        asks: dict[str, Any] = {}
        for node in nodes:
            unknown = [p for p in paths if (known := self._files.get((node, p))) is None
                       or (not known[0] and now - known[1] > FILES_RECHECK)]
            if unknown:
                strategy = NodeAffinitySchedulingStrategy(node, soft=False)
                asks[node] = (unknown, self._files_task.options(scheduling_strategy=strategy).remote(unknown))
        for node, (asked, ref) in asks.items():
            try:
                there = set(ray.get(ref, timeout=SURVEY_TIMEOUT))
            except RayError as exc:  # the node left meanwhile, or is too busy to say: not this time
                log.warning("a node did not say which model files it has node=%s error=%s", node, type(exc).__name__)
                if isinstance(exc, GetTimeoutError):
                    ray.cancel(ref, force=True)
                continue
            for path in asked:
                self._files[node, path] = (path in there, now)
        return {node: frozenset(p for p in paths if self._files.get((node, p), (False, 0.0))[0]) for node in nodes}

    def node_alive(self, node: str) -> bool:
        """Whether Ray still counts ``node`` in the cluster. Blocking."""
        try:
            return any(n["NodeID"] == node and n.get("Alive") for n in ray.nodes())
        except RayError:
            return True  # the cluster does not answer: nothing says the node is gone

    @property
    def reports_gpu(self) -> bool:
        return any(r.get("GPU", 0) > 0 for r in self._resources.values())

    # -- workers --------------------------------------------------------------------------------------
    async def _open(self) -> None:
        if self._opening is None:
            self._opening = asyncio.ensure_future(self.rendezvous.open())
        await asyncio.shield(self._opening)

    async def start(self, settings: ModelSettings, node: str = LOCAL, reserve: int = 0
                    ) -> tuple[RayWorker, FrameChannel]:
        await self._open()
        resources = self._resources.get(node)
        if resources is None:
            raise WorkerNotPlaced(f"no worker for model {settings.name!r} could be placed: node {node} is not in "
                                  "the cluster", model=settings.name)
        threads = max(settings.threads, settings.batch_threads)
        options = reservation(resources, reserve, threads, settings.gpu_layers)
        agent = self._agent.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
                                    **options).remote()
        ticket = self.rendezvous.expect()
        log.info("placing worker model=%s node=%s options=%s", settings.name, node, options)
        try:
            pid = await asyncio.wait_for(asyncio.wrap_future(
                agent.start.remote(self.host, self.rendezvous.port, ticket.token, settings.engine).future()),
                PLACE_TIMEOUT)
            channel = await asyncio.wait_for(asyncio.shield(ticket.channel), CONNECT_TIMEOUT)
        except (TimeoutError, RayError) as exc:
            self.rendezvous.withdraw(ticket)
            with contextlib.suppress(RayError):
                ray.kill(agent)
            raise WorkerNotPlaced(f"no worker for model {settings.name!r} could be placed on node {node}: "
                                  f"{_why(exc, self.host, self.rendezvous.port)}", model=settings.name) from None
        return RayWorker(agent, pid, node, channel, self), channel

    def measure(self, workers: Sequence[WorkerProcess]) -> list[Footprint]:
        refs = [w.agent.measure.remote() if isinstance(w, RayWorker) and w.returncode is None else None
                for w in workers]
        out = []
        for ref in refs:
            try:
                pss, gpu = ray.get(ref, timeout=MEASURE_TIMEOUT) if ref is not None else (0, 0)
            except RayError:  # ended meanwhile, or its node is slow: no figure this time
                pss, gpu = 0, 0
            out.append(Footprint(pss, gpu))
        return out

    async def close(self) -> None:
        await self.rendezvous.close()
        if self.owns_connection:
            await asyncio.to_thread(ray.shutdown)


def _reachable(address: str) -> None:
    """Refuse a ``HOST:PORT`` nobody listens on at once: ``ray.init`` would retry it for minutes."""
    host, sep, port = address.rpartition(":")
    if not sep or "://" in address or not port.isdigit():
        return  # ``auto``, ``ray://…``: Ray's own to resolve
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT).close()
    except OSError as exc:
        raise ConfigError(f"cannot join the Ray cluster at {address}: nothing answers there ({exc.strerror or exc})",
                          hint="start one with `ray start --head`, and give its address as HOST:PORT "
                               "(or `auto` on a node of it)") from None


def _why(exc: BaseException, host: str, port: int) -> str:
    """A failed start, in a sentence."""
    if isinstance(exc, TimeoutError) and not isinstance(exc, GetTimeoutError):
        return f"Ray did not start it within {PLACE_TIMEOUT:.0f} s (the node has no room left in Ray's resources?)"
    if isinstance(exc, RayActorError):
        return "its actor died before it started (the node left the cluster?)"
    if isinstance(exc, RayError) and isinstance(getattr(exc, "cause", None), OSError):
        return f"it could not connect back to the supervisor at {host}:{port} ({exc.cause})"
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"

