"""The pool: runs the policy's decisions on workers, and is what every route talks to.

``PoolPolicy`` decides (pure, synchronous); this class carries its decisions out — it *is* the
policy's ``Effects`` — and feeds the outcomes back as events. What it does itself: the request path
(``acquire`` → ``Lease``), the five effects and the tasks that carry them out (load, park, stop), the
operator's actions (load, unload, activate) and the periodic tick. Each other job has its own module:

| job | module |
|---|---|
| decisions: admission, waiting, eviction, keep-alive | ``warren/pool/policy.py`` (+ ``eviction.py``) |
| a request's hold on a model, model names and handles | ``warren/pool/lease.py`` |
| one model's worker, its queue and its crash report | ``warren/pool/instance.py`` |
| crash counting, quarantine, restart back-off | ``warren/pool/crashes.py`` (+ ``culprits.py``) |
| the warm spare | ``warren/pool/spare.py`` |
| a parked model's saved KV state | the worker keeps it (``warren/worker/kvstate.py``); the policy counts it |
| memory measurement | ``warren/pool/memory.py`` |
| the status view and its events | ``warren/pool/status.py`` (+ ``events.py``, ``state.py``) |
| background tasks | ``warren/pool/tasks.py`` |
| starting workers | the ``Launcher`` it is given (``warren/worker/launcher.py``; local by default) |
| which node a load goes to (a cluster) | ``warren/pool/placement.py``, through the policy |
| time | the ``Clock`` it is given (``warren/clock.py``): every wait of the pool goes through it |

On a cluster (a launcher that ``places`` workers: ``warren --cluster``) the pool also keeps the nodes the
launcher reports (``survey``: at start, every ``MEASURE_EVERY`` ticks, for a model file not asked about
yet, and at once when a node is lost) and hands them to the policy, each with its own budget. Two
features stay off there, because a Ray actor's resources are fixed for its life: the warm spare (its
reservation could not grow to the model that adopts it) and parking (a parked worker would keep its
whole reservation on its node, so parking could never make room, which is all it is for). For the same
reason a worker's measured footprint is never counted below the reservation its actor holds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Sequence
from typing import Any

from warren.catalog import Catalog, CatalogEntry
from warren.clock import Clock, MonotonicClock
from warren.errors import (
    Forbidden,
    HandleGone,
    ModelNotFound,
    Quarantined,
    ServerStopping,
    WarrenError,
    WorkerLoadFailed,
    WorkerNotPlaced,
)
from warren.params import GenerationParams
from warren.pool.compute import ComputeShares
from warren.pool.crashes import CrashGuard
from warren.pool.culprits import Culprits
from warren.pool.events import EventBus
from warren.pool.instance import ModelInstance
from warren.pool.lease import Lease, split_handle
from warren.pool.memory import MEASURE_EVERY, MIB, Footprints, MemoryMeter
from warren.pool.placement import Capacity
from warren.pool.policy import PoolPolicy, Resident
from warren.pool.spare import WarmSpare
from warren.pool.state import InstanceState
from warren.pool.status import StatusView
from warren.pool.tasks import TaskSet
from warren.settings import ServerSettings
from warren.worker.launcher import LOCAL, ExitKind, Footprint, Launcher, Node
from warren.worker.local import LocalLauncher

__all__ = ["Lease", "Pool", "split_handle"]

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0  # keep-alive and waiting deadlines are checked this often
BYTES_PER_TOKEN = 32  # a token is ~4 characters of text; JSON escapes and UTF-8 take a few times that at most
BODY_SLACK = 2**20  # on top of the prompt: the rest of a request's JSON (messages, samplers, grammars)


class Pool:
    def __init__(self, server: ServerSettings, catalog: Catalog, *, budget: int, max_models: int = 0,
                 keep_alive: float = 300.0, wait_seconds: float = 60.0, heartbeat: bool = True,
                 warm_spare: bool = True, park: bool = True, launcher: Launcher | None = None,
                 clock: Clock | None = None) -> None:
        self.server = server
        self.catalog = catalog
        self.launcher: Launcher = launcher or LocalLauncher()
        self.clock: Clock = clock or MonotonicClock()
        self.heartbeat = heartbeat
        places = self.launcher.places
        self.park_evicted = park and not places
        # A parked worker keeps its whole context when the budget has room for it: the conversation's cells
        # stay where they are and the resume costs no new context (~45 ms and a state copy for the default
        # model at 4,096 tokens); under pressure the context goes first (``drop_state``), as a state would.
        self.keep_contexts = True
        # --kvcache-dir: stopped workers' KV states go to files there (warren/worker/kvfile.py); not memory
        self.disk_tier = (str(server.kvcache_dir), server.kvcache_bytes) if server.kvcache_dir else ("", 0)
        self.policy = PoolPolicy(self, budget=budget, nodes={} if places else None, max_models=max_models,
                                 keep_alive=keep_alive, wait_seconds=wait_seconds)
        self.cluster: dict[str, Node] = {}  # a placing launcher's nodes, as last surveyed
        self._surveyed: frozenset[str] = frozenset()  # the model paths that survey asked about
        self._survey: asyncio.Task[None] | None = None
        self.instances: dict[str, ModelInstance] = {}
        self.active_name: str | None = catalog.active.name if catalog.active else None
        self.events = EventBus()
        self.evictions: dict[str, int] = {}
        self.tasks = TaskSet()
        self.culprits = Culprits()
        # The cores, shared among the workers that generate (warren/pool/compute.py). Only on one machine:
        # on a cluster a worker's cores are its node's, and a node's threads are reserved in Ray instead.
        self.compute = ComputeShares()
        self.crashes = CrashGuard(self.culprits)
        self.footprints = Footprints()
        self.meter = MemoryMeter(self.launcher, self.clock, self.tasks, residents=self.policy.residents,
                                 instances=self.instances, record=self._measured)
        self.spare = WarmSpare(self.launcher, self.clock, self.tasks, enabled=warm_spare and not places,
                               heartbeat=heartbeat, idle=self.compute.idle,
                               room=lambda: self.policy.budget - self.policy.reserved)
        self.view = StatusView(self)
        self._tickets: dict[int, asyncio.Future[Resident | None]] = {}
        self._ticket_ids = itertools.count(1)
        self._loads: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, asyncio.Task[None]] = {}
        self._ticks = 0
        self._ticker: asyncio.Task[None] | None = None
        self._closing = False

    @classmethod
    def from_settings(cls, server: ServerSettings, catalog: Catalog, *, launcher: Launcher | None = None,
                      clock: Clock | None = None) -> Pool:
        """The pool the command line asks for (``warren/cli/main.py``; tests build theirs the same way)."""
        return cls(server, catalog, budget=server.memory_budget, max_models=server.max_models,
                   keep_alive=server.keep_alive, wait_seconds=server.load_wait, warm_spare=server.warm_spare,
                   park=server.park, launcher=launcher, clock=clock)

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def start(self, preload: bool = True) -> None:
        self.catalog.refresh()
        if self.launcher.places:
            await self.survey()
        self._ticker = asyncio.create_task(self._tick_loop(), name="pool-tick")
        if not preload:
            return
        names = [e.name for e in self.catalog.entries.values() if e.pinned and e.valid]
        if self.active_name and self.active_name not in names:
            names.insert(0, self.active_name)
        for name in names:
            try:
                await self.load(name, pin=True if self.catalog.entries[name].pinned else None)
            except WarrenError as exc:
                log.error("model failed to load at start-up model=%s error=%s", name, exc.message)
        self.spare.ensure()

    def begin_shutdown(self) -> None:
        """SIGTERM: requests waiting for room are refused now, and new ones from here on."""
        self._closing = True
        self.policy.reject_waiting(ServerStopping())

    async def close(self) -> None:
        """Shut down: stop every worker (and the spare) and every pool task."""
        self._closing = True
        if self._ticker is not None:
            self._ticker.cancel()
        await self.tasks.cancel_all()
        await asyncio.gather(*(i.stop() for i in self.instances.values()), self.spare.close(),
                             return_exceptions=True)
        await self.launcher.close()

    # -- the request path ---------------------------------------------------------------------------------
    def instance_for(self, name: str | None) -> ModelInstance:
        """The instance info routes describe (perf, context size, genkey polling), without loading it; a
        handle must still name the current instance."""
        base, generation = split_handle(self._name_or_active(name))
        if generation is not None:
            self._check_handle(base, generation)
        return self.instances.get(base) or self._instance(self._valid_entry(self.catalog.get(base)))

    def _name_or_active(self, name: str | None) -> str:
        """``None`` is the active model; any string is a name (an empty one names nothing)."""
        if name is not None:
            return name
        if self.active_name is None:
            raise ModelNotFound("no model is loaded (the server was started with --nomodel)",
                                hint="load one with POST /api/admin/reload_config or POST /api/models/NAME/load")
        return self.active_name

    @staticmethod
    def _valid_entry(entry: CatalogEntry) -> CatalogEntry:
        if not entry.valid:
            raise WorkerLoadFailed(f"model {entry.name!r} cannot be loaded: {entry.error}", model=entry.name)
        return entry

    async def acquire(self, name: str | None) -> Lease:
        """Admit one request on ``name`` (a model, ``koboldcpp/<model>``, a handle ``model@N``, or None for
        the active model). May load the model, evict idle ones, or wait for room."""
        if self._closing:
            raise ServerStopping()
        base, generation = split_handle(self._name_or_active(name))
        entry = self.catalog.get(base)
        if generation is not None:
            self._check_handle(base, generation)
        self._check_loadable(entry)
        instance = self._instance(entry)
        nodes = await self._nodes_for(entry)
        ticket = next(self._ticket_ids)
        future: asyncio.Future[Resident | None] = asyncio.get_running_loop().create_future()
        self._tickets[ticket] = future
        park_need = self.footprints.park_need(entry) if self.park_evicted else 0
        assert entry.settings is not None  # _check_loadable: a valid entry
        threads = max(entry.settings.threads, entry.settings.batch_threads) if nodes is not None else 0
        need = self.footprints.need(entry)
        if nodes is not None:
            need = -(-need // MIB) * MIB  # whole MiB: the unit of a reservation in Ray's resources
        self.policy.request(ticket, base, need, self.clock.now(), park_need=park_need, nodes=nodes, threads=threads)
        if not future.done():
            self.view.publish(instance, "waiting")  # no room for it yet: it waits (``waiting`` in the status)
        try:
            resident = await future
        except BaseException:
            # Given up while waiting (client gone, shutdown): the policy forgets the waiter, so nothing is
            # evicted or loaded for it; a grant that landed in the same instant is handed straight back.
            if future.done() and not future.cancelled() and future.exception() is None:
                self.policy.released(base, self.clock.now())
            else:
                self.policy.withdraw(ticket, self.clock.now())
            raise
        finally:
            self._tickets.pop(ticket, None)
        return Lease(self, instance, resident)

    async def _nodes_for(self, entry: CatalogEntry) -> list[str] | None:
        """The nodes that have ``entry``'s model file (None on one machine: no choice to make). A file the
        last survey did not ask about is asked about now."""
        if not self.launcher.places or entry.settings is None:
            return None
        path = str(entry.settings.path)
        if path not in self._surveyed:
            await self.survey()
        return [n.id for n in self.cluster.values() if path in n.files]

    # -- the cluster --------------------------------------------------------------------------------------
    async def survey(self) -> None:
        """Ask the launcher for its nodes and which model files each has; the policy gets their budgets.
        One survey at a time: a caller arriving during one waits for it. A survey that fails is logged
        and leaves the nodes as they were."""
        self._survey_soon()
        assert self._survey is not None
        await asyncio.shield(self._survey)

    def _survey_soon(self) -> None:
        if self._survey is None or self._survey.done():
            self._survey = self.tasks.spawn(self._run_survey(), "survey")

    async def _run_survey(self) -> None:
        paths = frozenset(str(e.settings.path) for e in self.catalog.entries.values() if e.settings is not None)
        try:
            nodes = await asyncio.to_thread(self.launcher.nodes, paths)
        except WarrenError as exc:
            log.warning("could not survey the cluster's nodes error=%s", exc.message)
            return
        self._surveyed = paths
        self._set_cluster({n.id: n for n in nodes})

    def _set_cluster(self, nodes: dict[str, Node]) -> None:
        if set(nodes) != set(self.cluster):
            log.info("cluster nodes=%s", ",".join(sorted(nodes)) or "none")
        self.cluster = nodes
        self.policy.set_nodes({n.id: Capacity(n.memory, n.threads) for n in nodes.values()}, self.clock.now())
        if self.events.listened:
            self.events.publish("nodes", nodes=self.view.nodes())

    def _node_lost(self, node: str) -> None:
        """A worker went with its node: no load may be placed there from now on (before the survey that
        confirms it, which is started now)."""
        if node in self.cluster:
            self._set_cluster({k: v for k, v in self.cluster.items() if k != node})
        self._survey_soon()

    def load_task(self, model: str) -> asyncio.Task[None] | None:
        """The task loading (or resuming) ``model``, if one was started; a lease waits on it."""
        return self._loads.get(model)

    def _check_handle(self, name: str, generation: int) -> None:
        inst = self.instances.get(name)
        resident = self.policy.residents.get(name)
        stopping = resident is not None and resident.phase is InstanceState.STOPPING
        if inst is None or inst.generation != generation or resident is None or stopping:
            now = f"; it is now {inst.handle_id}" if inst and resident and not stopping else ""
            raise HandleGone(f"handle {name}@{generation} is gone: that instance of model {name!r} was unloaded{now}",
                             hint=f"address the model as {name!r} to get whichever instance serves it", model=name)

    def _check_loadable(self, entry: CatalogEntry) -> None:
        self._valid_entry(entry)
        quarantined = self.crashes.check(entry.name, entry.fingerprint)
        if quarantined is not None:
            raise Quarantined(f"model {entry.name!r} is quarantined: {quarantined.reason}",
                              hint="fix its file or settings, or load it explicitly with "
                                   f"POST /api/models/{entry.name}/load", model=entry.name)

    def _instance(self, entry: CatalogEntry) -> ModelInstance:
        assert entry.settings is not None
        inst = self.instances.get(entry.name)
        if inst is None:
            inst = ModelInstance(entry.settings, launcher=self.launcher, queue_limit=self.server.queue_limit,
                                 heartbeat=self.heartbeat, on_exit=self._on_crash,
                                 on_progress=lambda i: self.view.publish(i, "progress"), culprits=self.culprits,
                                 compute=None if self.launcher.places else self.compute, disk_tier=self.disk_tier)
            self.instances[entry.name] = inst
        elif inst.settings != entry.settings and inst.name not in self.policy.residents:
            inst.settings = entry.settings  # the entry changed while it was not loaded
        return inst

    # -- Effects (called by the policy, synchronously) ----------------------------------------------------
    def start_load(self, model: str, evict: Sequence[str]) -> None:
        self._loads[model] = self.tasks.spawn(self._load(model, list(evict)), f"load-{model}")

    def stop(self, model: str, reason: str) -> None:
        self._stops[model] = self.tasks.spawn(self._stop(model, reason), f"stop-{model}")

    def park(self, model: str) -> None:
        instance = self.instances.get(model)
        try:
            if instance is None:
                raise WarrenError(f"model {model!r} has no instance")
            # Its context, or else its KV state, may take what the budget has left once it is parked (the policy
            # counted that already). Only a context in RAM stays whole: that is what the budget counts.
            room = max(0, self.policy.budget - self.policy.reserved)
            keep_context = self.keep_contexts and not instance.offloaded
            request = instance.park(room, keep_context)  # parked from now on, synchronously: nothing sees it ready
        except WarrenError as exc:
            self._park_failed(model, exc)
            return
        self.evictions[model] = self.evictions.get(model, 0) + 1
        self.tasks.spawn(self._park(instance, request), f"park-{model}")

    def drop_state(self, model: str) -> None:
        instance = self.instances.get(model)
        if instance is not None:
            log.info("dropping the saved KV state of model=%s: the budget needs the room", model)
            self.tasks.spawn(self._drop_state(instance), f"drop-state-{model}")

    async def _drop_state(self, instance: ModelInstance) -> None:
        try:
            await instance.drop_state()
        except WarrenError as exc:  # the state stays uncounted: the next measurement sees what is left
            log.warning("could not drop the KV state of model=%s error=%s", instance.name, exc.message)
        self.view.publish(instance, "measured")

    def grant(self, ticket: int, model: str) -> None:
        future = self._tickets.get(ticket)
        if future is not None and not future.done():
            future.set_result(self.policy.residents.get(model))  # the resident this grant counted on
            asyncio.get_running_loop().call_soon(self.view.publish_usage, model)
        else:  # the client left while waiting: hand the admission straight back
            asyncio.get_running_loop().call_soon(self.policy.released, model, self.clock.now())

    def reject(self, ticket: int, error: WarrenError) -> None:
        future = self._tickets.get(ticket)
        if future is not None and not future.done():
            future.set_exception(error)

    # -- carrying the effects out -------------------------------------------------------------------------
    async def _load(self, model: str, evict: list[str]) -> None:
        placed = self.policy.residents.get(model)
        node, reserve = (placed.node, placed.bytes) if placed is not None else (LOCAL, 0)
        replaced = [h.pid for h in (self.instances[v].handle for v in evict if v in self.instances)
                    if h is not None and h.alive and h.node == node]  # a pid names a process on its own node
        for victim in evict:
            self.evictions[victim] = self.evictions.get(victim, 0) + 1
            log.info("evicting model=%s to load model=%s", victim, model)
            self.stop(victim, f"evicted for {model}")
        # The victims' channels are closed now and they exit in milliseconds, while the new model takes
        # ~100 ms to load: overlapping the two costs at most that short overlap in memory and saves the
        # wait from every swap. (A victim that does not exit is killed by its stop's escalation.)
        delay = self.crashes.backoff(model, self.clock.now())
        if delay > 0:
            log.info("restarting after a crash model=%s backoff_s=%.1f", model, delay)
            await self.clock.sleep(delay)
        entry = self.catalog.entries.get(model) or self.catalog.get(model)
        instance = self._instance(entry)
        self.view.publish(instance, "loading")
        started = time.perf_counter()
        resuming = instance.parked and instance.settings == entry.settings
        if instance.parked and not resuming:  # its entry changed while parked: a fresh worker
            await instance.stop()
            instance.settings = entry.settings
        try:
            if resuming:  # the model is loaded: a context is all it needs, and no second core's help
                self.spare.trim()
                await instance.load()
            else:
                spare = await self.spare.take(instance.settings)
                self.spare.trim()
                await instance.load(spare, prefault_bytes=entry.estimate.kv_cache if entry.estimate else 0,
                                    prefault_after=replaced, node=node, reserve=reserve)
        except WarrenError as exc:
            if isinstance(exc, WorkerNotPlaced):
                self._survey_soon()  # the node may have left
            if isinstance(exc, WorkerLoadFailed) or instance.last_exit_kind is ExitKind.UNRUNNABLE:
                self.crashes.load_failed(model, fingerprint=entry.fingerprint, message=exc.message)
            self.policy.load_finished(model, ok=False, measured=0, load_seconds=0.0, now=self.clock.now())
            self.view.publish(instance, "load_failed", error=exc.message)
            raise
        assert instance.handle is not None
        # The reservation stays at the estimate until the measurement replaces it, a moment later.
        self.policy.load_finished(model, ok=True, measured=0, load_seconds=time.perf_counter() - started,
                                  now=self.clock.now())
        self.meter.soon(model, instance.handle)
        self.policy.configure(model, pinned=True if entry.pinned else None, priority=entry.priority)
        if entry.keep_alive is not None:
            self.policy.configure(model, keep_alive=entry.keep_alive)
        elif model == self.active_name:
            self.policy.configure(model, keep_alive=-1)  # as KoboldCpp: the active model stays loaded
        self.view.publish(instance, "ready")
        self.spare.ensure()

    async def _park(self, instance: ModelInstance, request: Awaitable[int]) -> None:
        try:
            state_bytes = await request
        except WarrenError as exc:
            self._park_failed(instance.name, exc)
            return
        if state_bytes:
            kept = "context" if instance.handle is not None and instance.handle.parked_context else "KV state"
            log.info("parked with its %s model=%s state_mib=%.1f", kept, instance.name, state_bytes / 2**20)
            self.policy.state_kept(instance.name, state_bytes)
        self.view.publish(instance, "parked")
        assert instance.handle is not None
        self.meter.soon(instance.name, instance.handle, parked=True)

    def _park_failed(self, model: str, error: WarrenError) -> None:
        resident = self.policy.residents.get(model)
        if self._closing or resident is None or resident.phase is not InstanceState.PARKED:
            return  # stopped meanwhile (its channel closed under the Park request): nothing to undo
        log.warning("could not park model=%s error=%s; unloading it", model, error.message)
        self.policy.unload(model, f"could not park: {error.message}", self.clock.now())

    async def _stop(self, model: str, reason: str) -> None:
        instance = self.instances.get(model)
        try:
            if instance is not None:
                log.info("unloading model=%s reason=%s", model, reason)
                instance.last_exit = f"unloaded: {reason}"
                instance.last_exit_kind = ExitKind.REQUESTED
                await instance.stop()
        finally:
            if self._stops.get(model) is asyncio.current_task():
                del self._stops[model]
            self.policy.exited(model, self.clock.now())
        if instance is not None:
            self.view.publish(instance, "unloaded", reason=reason)

    def _on_crash(self, instance: ModelInstance, error: WarrenError, culprit: GenerationParams | None = None
                  ) -> None:
        """A worker died by itself. A crash during a generation is charged to that request; other crashes
        count toward the model's quarantine (``warren/pool/crashes.py``). Either way its reservation goes."""
        entry = self.catalog.entries.get(instance.name)
        if instance.last_exit_kind is ExitKind.LOST and instance.node is not None:
            self._node_lost(instance.node)  # before the policy hears of the exit and admits waiters
        charged = self.crashes.crashed(instance.name, kind=instance.last_exit_kind or ExitKind.CRASHED,
                                       message=error.message, fingerprint=entry.fingerprint if entry else (),
                                       now=self.clock.now(), culprit=culprit)
        if charged:
            log.warning("crash charged to the request model=%s error=%s", instance.name, error.message)
        self.policy.exited(instance.name, self.clock.now())
        extra: dict[str, Any] = {"charged_to_request": True} if charged else {}
        self.view.publish(instance, "crashed", error=error.message, **extra)

    def _measured(self, model: str, footprint: Footprint, parked: bool) -> None:
        """A worker's footprint was measured (``warren/pool/memory.py``): keep it for the entry's next
        load, tell the policy the current one, make room by stopping the spare, tell watchers."""
        resident = self.policy.residents.get(model)
        state = resident.state_bytes if parked and resident is not None else 0
        moved = self.footprints.record(model, footprint, parked=parked, state=state)
        instance = self.instances.get(model)
        held = instance.handle.reserve if instance is not None and instance.handle is not None else 0
        self.policy.measured(model, max(footprint.total, held), parked=parked)  # (module docstring: Ray)
        if not parked:
            self.spare.trim()
        if moved and instance is not None:
            self.view.publish(instance, "measured")

    # -- operator actions ---------------------------------------------------------------------------------
    async def load(self, name: str, *, pin: bool | None = None, keep_alive: float | None = None) -> ModelInstance:
        """Load ``name`` now (lifting a quarantine: an operator asked), then apply pin/keep-alive. A handle
        ``name@N`` means exactly that instance: 410 if it is not the current one, never another."""
        base, generation = split_handle(name)
        if generation is not None:
            self._check_handle(base, generation)
        self.crashes.lift(base)
        lease = await self.acquire(name)
        try:
            instance = await lease.ready()
            self.policy.configure(base, pinned=pin, keep_alive=keep_alive)
            return instance
        finally:
            lease.release()

    def unload(self, name: str, reason: str = "unload requested") -> bool:
        base, generation = split_handle(name)
        if generation is not None:
            self._check_handle(base, generation)
        return self.policy.unload(base, reason, self.clock.now())

    def body_limit(self) -> int:
        """The largest request body worth reading: ``--maxrequestsize``, lowered to what a prompt for the
        largest context in the catalog could take (``BYTES_PER_TOKEN`` a token, generously, plus room for
        a chat's JSON), so a body that could never be a prompt is refused before it is buffered."""
        contexts = [e.settings.context_size for e in self.catalog.entries.values() if e.settings is not None]
        prompt = max(contexts, default=8192) * BYTES_PER_TOKEN + BODY_SLACK
        return min(self.server.max_request_bytes, prompt)

    def protected(self, name: str) -> bool:
        """Set by the operator to stay: pinned (catalog or pool API) or the active model."""
        base, _ = split_handle(name)
        r = self.policy.residents.get(base)
        entry = self.catalog.entries.get(base)
        return base == self.active_name or bool(r and r.pinned) or bool(entry and entry.pinned)

    def client_keep_alive(self, name: str, seconds: float) -> None:
        """A generation request's keep-alive (Ollama's ``keep_alive``): it may shorten how long the model
        stays idle, within what the operator set; a pinned or active model ignores it."""
        if self.protected(name):
            log.debug("keep_alive from a request ignored: model=%s is pinned or active", name)
            return
        self.policy.configure(split_handle(name)[0], client_keep_alive=seconds)

    def unload_for_client(self, name: str, reason: str) -> bool:
        """A generation request asks to unload (Ollama ``keep_alive: 0`` with no prompt): refused for what the
        operator keeps — a pinned or the active model — which only the admin API unloads."""
        if self.protected(name):
            base, _ = split_handle(name)
            raise Forbidden(f"model {base!r} is {'the active model' if base == self.active_name else 'pinned'}: a "
                            "generation request cannot unload it",
                            hint=f"the operator can: POST /api/models/{base}/unload with the admin key")
        return self.unload(name, reason)

    async def activate(self, name: str) -> ModelInstance:
        """Hot swap: make ``name`` the active model. New requests wait for it; if it fails to load, the
        previous active model stays active (and loaded, unless the budget needed its room)."""
        previous = self.active_name
        self.active_name = name
        try:
            instance = await self.load(name)
        except WarrenError:
            self.active_name = previous
            raise
        self.policy.configure(name, keep_alive=-1)
        if previous and previous != name:
            self.policy.configure(previous, pinned=False, clear_keep_alive=True)
        self.events.publish("active", model=name)
        return instance

    def deactivate(self) -> None:
        if self.active_name is not None:
            self.unload(self.active_name, "unloaded by the admin")
        self.active_name = None
        self.events.publish("active", model=None)

    # -- periodic work ------------------------------------------------------------------------------------
    async def _tick_loop(self) -> None:
        while True:
            await self.clock.sleep(TICK_SECONDS)
            self.tick()

    def tick(self) -> None:
        """Time passed: waiting deadlines and keep-alives (the policy); every ``MEASURE_EVERY`` ticks, the
        idle residents' memory and a catalog rescan."""
        self.policy.tick(self.clock.now())
        if self._ticks % MEASURE_EVERY == 0:
            self.meter.idle()
            with contextlib.suppress(WarrenError):
                self.catalog.refresh()
            if self.launcher.places:
                self._survey_soon()
        self._ticks += 1

    # -- status (``warren/pool/status.py``) ----------------------------------------------------------------
    def describe(self, name: str) -> dict[str, Any]:
        return self.view.describe(name)

    def status(self) -> dict[str, Any]:
        return self.view.status()
