"""The pool: runs the policy's decisions on real workers, and is what every route talks to.

``PoolPolicy`` decides (pure, synchronous); this class carries its decisions out — it *is* the
policy's ``Effects`` — and feeds the outcomes back as events. It owns the model instances, the
tasks that load and stop them, the warm spare worker, quarantine and crash back-off, and the
periodic tick (keep-alive expiry, waiting deadlines, memory measurement, catalog rescans).

A request goes through ``acquire`` → ``Lease``: the policy admits it (loading the model, evicting
idle ones, or making it wait), the lease's ``ready()`` waits for the load, and ``release()`` tells the
policy the request is over, which is what keeps busy instances from being evicted.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from warren.catalog import Catalog, CatalogEntry
from warren.errors import (
    Forbidden,
    HandleGone,
    ModelNotFound,
    Quarantined,
    ServerStopping,
    WarrenError,
    WorkerLoadFailed,
)
from warren.gguf.estimate import WORKER_BASE_BYTES
from warren.params import GenerationParams
from warren.pool.culprits import Culprits
from warren.pool.events import EventBus
from warren.pool.instance import ModelInstance
from warren.pool.policy import PoolPolicy, Resident
from warren.pool.state import InstanceState, state_of
from warren.settings import ModelSettings, ServerSettings
from warren.worker.gpu_memory import GpuMemory
from warren.worker.handle import WorkerHandle
from warren.worker.local import measure_footprint

log = logging.getLogger(__name__)

TICK_SECONDS = 1.0  # keep-alive and waiting deadlines are checked this often
MEASURE_EVERY = 5  # ticks between memory measurements and catalog rescans
CRASH_WINDOW = 120.0  # crashes older than this are forgotten
CRASH_LOOP_LIMIT = 4  # this many crashes within the window quarantine the model
BACKOFF_BASE, BACKOFF_MAX = 0.5, 30.0  # seconds before restarting after the n-th crash: base * 2**(n-1)
# After crashes charged to requests: short, so one client's bad requests cannot hold the model off for
# everyone, yet a burst of them cannot make the worker restart back to back.
CHARGED_BACKOFF_BASE, CHARGED_BACKOFF_MAX = 0.25, 2.0
SPARE_DELAY = 0.2  # seconds after a load before the next warm spare starts (let its first request run)
MEASURE_DELAY = 0.3  # seconds after a load before its first memory measurement (likewise)
BYTES_PER_TOKEN = 32  # a token is ~4 characters of text; JSON escapes and UTF-8 take a few times that at most
BODY_SLACK = 2**20  # on top of the prompt: the rest of a request's JSON (messages, samplers, grammars)


def split_handle(name: str) -> tuple[str, int | None]:
    """``smol@3`` -> ("smol", 3); ``koboldcpp/smol`` -> ("smol", None); ``@3`` is neither: ``ModelNotFound``."""
    name = name.removeprefix("koboldcpp/")
    base, sep, gen = name.rpartition("@")
    if sep and gen.isdigit():
        if not base:
            raise ModelNotFound(f"{name!r} names no model", hint="a handle is NAME@GENERATION, e.g. smol@1")
        return base, int(gen)
    if not name:
        raise ModelNotFound("no model named", hint="give a model name, or leave it out for the active model")
    return name, None


class Lease:
    """One admitted request on one model. ``release()`` is idempotent and must always be called.

    It counts on the policy's ``Resident`` it was granted on: when that instance is gone (a crash) and a
    new one was admitted meanwhile, releasing an old lease must not take a request off the new count,
    or the new instance could be evicted under a running request."""

    def __init__(self, pool: Pool, instance: ModelInstance, resident: Resident | None = None) -> None:
        self.pool = pool
        self.instance = instance
        self.resident = resident
        self._released = False

    async def ready(self) -> ModelInstance:
        inst = self.instance
        if not (inst.state is InstanceState.READY and inst.handle is not None and inst.handle.alive):
            task = self.pool._loads.get(inst.name)
            if task is not None:
                await asyncio.shield(task)
            inst.require_ready()
        return inst

    def release(self) -> None:
        if not self._released:
            self._released = True
            current = self.pool.policy.residents.get(self.instance.name)
            if self.resident is None or current is self.resident:
                self.pool.policy.released(self.instance.name, self.pool.clock())
            self.pool._publish(self.instance, "usage")

    async def __aenter__(self) -> ModelInstance:
        try:
            return await self.ready()
        except BaseException:
            self.release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class Pool:
    def __init__(self, server: ServerSettings, catalog: Catalog, *, budget: int, max_models: int = 0,
                 keep_alive: float = 300.0, wait_seconds: float = 60.0, heartbeat: bool = True,
                 warm_spare: bool = True, park: bool = True, clock: Callable[[], float] = time.monotonic) -> None:
        self.server = server
        self.catalog = catalog
        self.clock = clock
        self.heartbeat = heartbeat
        self.warm_spare = warm_spare
        self.park_evicted = park
        self.policy = PoolPolicy(self, budget=budget, max_models=max_models, keep_alive=keep_alive,
                                 wait_seconds=wait_seconds)
        self.instances: dict[str, ModelInstance] = {}
        self.active_name: str | None = catalog.active.name if catalog.active else None
        self.events = EventBus()
        self.evictions: dict[str, int] = {}
        self._tickets: dict[int, asyncio.Future[Resident | None]] = {}
        self._ticket_ids = itertools.count(1)
        self._loads: dict[str, asyncio.Task[None]] = {}
        self._stops: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._quarantine: dict[str, tuple[tuple[Any, ...], str]] = {}
        self._crash_times: dict[str, list[float]] = {}
        self._charged_times: dict[str, list[float]] = {}  # crashes charged to requests (not quarantined)
        self.culprits = Culprits()
        self._measured: dict[str, int] = {}
        self._parked_measured: dict[str, int] = {}  # footprints measured while parked, per entry
        self.gpu = GpuMemory()
        self._gpu_bytes: dict[str, int] = {}  # the GPU part of each entry's last measurement
        self._spare: WorkerHandle | None = None
        self._spare_task: asyncio.Task[None] | None = None
        self._spare_starting = False
        self._spare_bytes = 0
        self._ticker: asyncio.Task[None] | None = None
        self._closing = False

    # -- lifecycle ----------------------------------------------------------------------------------------
    async def start(self, preload: bool = True) -> None:
        self.catalog.refresh()
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
        self._ensure_spare()

    def begin_shutdown(self) -> None:
        """SIGTERM: requests waiting for room are refused now, and new ones from here on."""
        self._closing = True
        self.policy.reject_waiting(ServerStopping())

    async def close(self) -> None:
        """Shut down: stop every worker (and the spare) and every pool task."""
        self._closing = True
        if self._ticker is not None:
            self._ticker.cancel()
        for task in list(self._loads.values()) + list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._loads.values(), *self._tasks, return_exceptions=True)
        stops = [i.stop() for i in self.instances.values()]
        if self._spare is not None:
            stops.append(self._spare.stop())
        await asyncio.gather(*stops, return_exceptions=True)

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None and not isinstance(t.exception(), WarrenError):
                log.error("pool task failed task=%s", t.get_name(), exc_info=t.exception())

        task.add_done_callback(done)
        return task

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
        ticket = next(self._ticket_ids)
        future: asyncio.Future[Resident | None] = asyncio.get_running_loop().create_future()
        self._tickets[ticket] = future
        self.policy.request(ticket, base, self._need(entry), self.clock(), park_need=self._park_need(entry))
        try:
            resident = await future
        except BaseException:
            # Given up while waiting (client gone, shutdown): the policy forgets the waiter, so nothing is
            # evicted or loaded for it; a grant that landed in the same instant is handed straight back.
            if future.done() and not future.cancelled() and future.exception() is None:
                self.policy.released(base, self.clock())
            else:
                self.policy.withdraw(ticket, self.clock())
            raise
        finally:
            self._tickets.pop(ticket, None)
        return Lease(self, instance, resident)

    def _check_handle(self, name: str, generation: int) -> None:
        inst = self.instances.get(name)
        resident = self.policy.residents.get(name)
        if inst is None or inst.generation != generation or resident is None or resident.phase is InstanceState.STOPPING:
            now = f"; it is now {inst.handle_id}" if inst and resident and resident.phase is not InstanceState.STOPPING \
                else ""
            raise HandleGone(f"handle {name}@{generation} is gone: that instance of model {name!r} was unloaded{now}",
                             hint=f"address the model as {name!r} to get whichever instance serves it", model=name)

    def _check_loadable(self, entry: CatalogEntry) -> None:
        self._valid_entry(entry)
        quarantined = self._quarantine.get(entry.name)
        if quarantined is not None:
            fingerprint, reason = quarantined
            if fingerprint == entry.fingerprint:
                raise Quarantined(f"model {entry.name!r} is quarantined: {reason}",
                                  hint="fix its file or settings, or load it explicitly with "
                                       f"POST /api/models/{entry.name}/load", model=entry.name)
            del self._quarantine[entry.name]  # the file or settings changed: try again

    def _instance(self, entry: CatalogEntry) -> ModelInstance:
        assert entry.settings is not None
        inst = self.instances.get(entry.name)
        if inst is None:
            inst = ModelInstance(entry.settings, queue_limit=self.server.queue_limit, heartbeat=self.heartbeat,
                                 on_exit=self._on_crash, on_progress=lambda i: self._publish(i, "progress"),
                                 culprits=self.culprits)
            self.instances[entry.name] = inst
        elif inst.settings != entry.settings and inst.name not in self.policy.residents:
            inst.settings = entry.settings  # the entry changed while it was not loaded
        return inst

    def _need(self, entry: CatalogEntry) -> int:
        """Bytes to reserve: the last measured footprint of this entry, else its estimate."""
        measured = self._measured.get(entry.name)
        if measured:
            return measured
        return entry.estimate.total if entry.estimate else 0

    def _park_need(self, entry: CatalogEntry) -> int:
        """What the entry would keep parked (its last parked measurement, else the estimate); 0 when its
        weights are not a file mapping, which parking could give back (``warren/worker/parking.py``)."""
        s = entry.settings
        if not self.park_evicted or s is None or not s.use_mmap or s.use_mlock or entry.estimate is None:
            return 0
        return self._parked_measured.get(entry.name) or entry.estimate.parked

    # -- Effects (called by the policy, synchronously) ----------------------------------------------------
    def start_load(self, model: str, evict: Sequence[str]) -> None:
        self._loads[model] = self._spawn(self._load(model, list(evict)), f"load-{model}")

    def stop(self, model: str, reason: str) -> None:
        self._stops[model] = self._spawn(self._stop(model, reason), f"stop-{model}")

    def park(self, model: str) -> None:
        instance = self.instances.get(model)
        try:
            if instance is None:
                raise WarrenError(f"model {model!r} has no instance")
            request = instance.park()  # parked from now on, synchronously: nothing sees it ready any more
        except WarrenError as exc:
            self._park_failed(model, exc)
            return
        self.evictions[model] = self.evictions.get(model, 0) + 1
        self._spawn(self._park(instance, request), f"park-{model}")

    def grant(self, ticket: int, model: str) -> None:
        future = self._tickets.get(ticket)
        if future is not None and not future.done():
            future.set_result(self.policy.residents.get(model))  # the resident this grant counted on
            asyncio.get_running_loop().call_soon(self._publish_usage, model)
        else:  # the client left while waiting: hand the admission straight back
            asyncio.get_running_loop().call_soon(self.policy.released, model, self.clock())

    def reject(self, ticket: int, error: WarrenError) -> None:
        future = self._tickets.get(ticket)
        if future is not None and not future.done():
            future.set_exception(error)

    # -- carrying the effects out -------------------------------------------------------------------------
    async def _load(self, model: str, evict: list[str]) -> None:
        replaced = [h.pid for h in (self.instances[v].handle for v in evict if v in self.instances)
                    if h is not None and h.alive]
        for victim in evict:
            self.evictions[victim] = self.evictions.get(victim, 0) + 1
            log.info("evicting model=%s to load model=%s", victim, model)
            self.stop(victim, f"evicted for {model}")
        # The victims' channels are closed now and they exit in milliseconds, while the new model takes
        # ~100 ms to load: overlapping the two costs at most that short overlap in memory and saves the
        # wait from every swap. (A victim that does not exit is killed by its stop's escalation.)
        await self._crash_backoff(model)
        entry = self.catalog.entries.get(model) or self.catalog.get(model)
        instance = self._instance(entry)
        self._publish(instance, "loading")
        started = time.perf_counter()
        resuming = instance.parked and instance.settings == entry.settings
        if instance.parked and not resuming:  # its entry changed while parked: a fresh worker
            await instance.stop()
            instance.settings = entry.settings
        try:
            if resuming:  # the model is loaded: a context is all it needs, and no second core's help
                self._trim_spare()
                await instance.load()
            else:
                spare = await self._take_spare(instance.settings)
                self._trim_spare()
                await instance.load(spare, prefault_bytes=entry.estimate.kv_cache if entry.estimate else 0,
                                    prefault_after=replaced)
        except WarrenError as exc:
            if isinstance(exc, WorkerLoadFailed) or instance.last_exit_kind == "unrunnable":
                self._quarantine[model] = (entry.fingerprint, exc.message)
            self.policy.load_finished(model, ok=False, measured=0, load_seconds=0.0, now=self.clock())
            self._publish(instance, "load_failed", error=exc.message)
            raise
        assert instance.handle is not None
        # The reservation stays at the estimate until the measurement replaces it, a moment later.
        self.policy.load_finished(model, ok=True, measured=0, load_seconds=time.perf_counter() - started,
                                  now=self.clock())
        self._spawn(self._measure_one(model, instance.handle.pid), f"measure-{model}")
        self.policy.configure(model, pinned=True if entry.pinned else None, priority=entry.priority)
        if entry.keep_alive is not None:
            self.policy.configure(model, keep_alive=entry.keep_alive)
        elif model == self.active_name:
            self.policy.configure(model, keep_alive=-1)  # as KoboldCpp: the active model stays loaded
        self._publish(instance, "ready")
        self._ensure_spare()

    async def _park(self, instance: ModelInstance, request: Awaitable[None]) -> None:
        try:
            await request
        except WarrenError as exc:
            self._park_failed(instance.name, exc)
            return
        self._publish(instance, "parked")
        assert instance.handle is not None
        self._spawn(self._measure_one(instance.name, instance.handle.pid, parked=True), f"measure-{instance.name}")

    def _park_failed(self, model: str, error: WarrenError) -> None:
        resident = self.policy.residents.get(model)
        if self._closing or resident is None or resident.phase is not InstanceState.PARKED:
            return  # stopped meanwhile (its channel closed under the Park request): nothing to undo
        log.warning("could not park model=%s error=%s; unloading it", model, error.message)
        self.policy.unload(model, f"could not park: {error.message}", self.clock())

    async def _stop(self, model: str, reason: str) -> None:
        instance = self.instances.get(model)
        try:
            if instance is not None:
                log.info("unloading model=%s reason=%s", model, reason)
                instance.last_exit = f"unloaded: {reason}"
                instance.last_exit_kind = "requested"
                await instance.stop()
        finally:
            if self._stops.get(model) is asyncio.current_task():
                del self._stops[model]
            self.policy.exited(model, self.clock())
        if instance is not None:
            self._publish(instance, "unloaded", reason=reason)

    def _on_crash(self, instance: ModelInstance, error: WarrenError, culprit: GenerationParams | None = None
                  ) -> None:
        """A worker died by itself. A crash during a generation ("crashed": a signal such as SIGSEGV or
        SIGABRT, or an exit status) is charged to that request: remembered in ``culprits`` and not
        counted toward quarantine. Crashes while idle or loading, SIGKILL (out of memory), hangs and
        unrunnable engines (SIGILL, SIGBUS) stay the model's."""
        now = self.clock()
        if culprit is not None and instance.last_exit_kind == "crashed":
            self.culprits.charge(instance.name, culprit, error.message)
            self._charged_times[instance.name] = [
                t for t in self._charged_times.get(instance.name, []) if now - t < CRASH_WINDOW] + [now]
            log.warning("crash charged to the request model=%s error=%s", instance.name, error.message)
            self.policy.exited(instance.name, now)
            self._publish(instance, "crashed", error=error.message, charged_to_request=True)
            return
        times = [t for t in self._crash_times.get(instance.name, []) if now - t < CRASH_WINDOW] + [now]
        self._crash_times[instance.name] = times
        entry = self.catalog.entries.get(instance.name)
        if instance.last_exit_kind == "unrunnable":  # the engine cannot run here: restarting cannot help
            self._quarantine[instance.name] = (entry.fingerprint if entry else (), error.message)
        elif len(times) >= CRASH_LOOP_LIMIT:
            self._quarantine[instance.name] = (entry.fingerprint if entry else (),
                                               f"it crashed {len(times)} times in {CRASH_WINDOW:.0f} s "
                                               f"(last: {error.message})")
        self.policy.exited(instance.name, now)
        self._publish(instance, "crashed", error=error.message)

    async def _crash_backoff(self, model: str) -> None:
        delay = 0.0
        for crashes, base, most in ((self._crash_times, BACKOFF_BASE, BACKOFF_MAX),
                                    (self._charged_times, CHARGED_BACKOFF_BASE, CHARGED_BACKOFF_MAX)):
            times = [t for t in crashes.get(model, []) if self.clock() - t < CRASH_WINDOW]
            if times:
                delay = max(delay, min(base * 2 ** (len(times) - 1), most) - (self.clock() - times[-1]))
        if delay > 0:
            log.info("restarting after a crash model=%s backoff_s=%.1f", model, delay)
            await asyncio.sleep(delay)

    # -- warm spare ---------------------------------------------------------------------------------------
    def _ensure_spare(self) -> None:
        if not self.warm_spare or self._spare is not None or (self._spare_task and not self._spare_task.done()):
            return
        self._spare_starting = False
        self._spare_task = self._spawn(self._start_spare(), "spare")

    async def _start_spare(self) -> None:
        # Start it a moment after a load, not during it: its interpreter start and imports take a core
        # for ~0.3 s, which would slow the first request on the model just loaded.
        await asyncio.sleep(SPARE_DELAY)
        if self.policy.budget - self.policy.reserved < WORKER_BASE_BYTES:
            return  # no room in the budget for an idle worker: loads start cold instead
        self._spare_starting = True
        handle = WorkerHandle(ModelSettings(name="spare", path=Path("/dev/null")), heartbeat=self.heartbeat)
        try:
            await handle.start()
        except WarrenError as exc:
            log.warning("warm spare worker did not start error=%s", exc.message)
            return
        self._spare_bytes = await asyncio.to_thread(measure_footprint, handle.pid)
        self._spare = handle

    def _trim_spare(self) -> None:
        """An idle spare is not reserved (the load that adopts it counts it in its own reservation), so
        when the residents' reservations no longer leave room for it — a load that does not adopt it
        (a resume, another engine), a measurement above the estimate — it is stopped."""
        spare = self._spare
        if spare is not None and self.policy.budget - self.policy.reserved < self._spare_bytes:
            log.info("stopping the warm spare: the budget has no room left for it")
            self._spare = None
            self._spawn(spare.stop(), "spare-stop")

    async def _take_spare(self, settings: ModelSettings) -> WorkerHandle | None:
        if settings.engine != "llama" or not self.warm_spare:
            return None
        task = self._spare_task
        if self._spare is None and task is not None and not task.done():
            if self._spare_starting:
                await asyncio.shield(task)  # a spare already on its way beats a cold start
            else:
                task.cancel()  # still waiting to start: start the worker for this load right away
        spare, self._spare = self._spare, None
        if spare is not None and (settings.engine != "llama" or not spare.alive):
            self._spawn(spare.stop(), "spare-stop")
            return None
        return spare

    # -- operator actions ---------------------------------------------------------------------------------
    async def load(self, name: str, *, pin: bool | None = None, keep_alive: float | None = None) -> ModelInstance:
        """Load ``name`` now (lifting a quarantine: an operator asked), then apply pin/keep-alive. A handle
        ``name@N`` means exactly that instance: 410 if it is not the current one, never another."""
        base, generation = split_handle(name)
        if generation is not None:
            self._check_handle(base, generation)
        self._quarantine.pop(base, None)
        self._crash_times.pop(base, None)
        self._charged_times.pop(base, None)
        self.culprits.forget(base)
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
        return self.policy.unload(base, reason, self.clock())

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
        for n in itertools.count():
            await asyncio.sleep(TICK_SECONDS)
            self.policy.tick(self.clock())
            if n % MEASURE_EVERY == 0:
                self._measure()
                with contextlib.suppress(WarrenError):
                    self.catalog.refresh()

    async def _measure_one(self, model: str, pid: int, parked: bool = False) -> None:
        """The first measurement of a new (or newly parked) worker, once its first requests are done: the
        kernel's walk of its page tables takes a few ms of CPU, which during the first decode (two threads
        on two cores here) delayed the first token of every swap. A model busy for longer is measured by
        the tick."""
        await asyncio.sleep(MEASURE_DELAY)
        resident = self.policy.residents.get(model)
        instance = self.instances.get(model)
        if resident is None or resident.in_flight or instance is None or instance.handle is None \
                or instance.handle.pid != pid or not instance.handle.alive or instance.parked != parked:
            return
        footprint = await asyncio.to_thread(self._footprint, model, pid)
        if footprint:
            self._record_footprint(model, footprint, parked=parked)

    def _footprint(self, model: str, pid: int) -> int:
        """PSS plus the GPU memory NVML reports for the worker (``warren/pool/gpu_memory.py``)."""
        gpu = self.gpu.by_pid().get(pid, 0)
        self._gpu_bytes[model] = gpu
        return measure_footprint(pid) + gpu

    def _record_footprint(self, model: str, footprint: int, parked: bool = False) -> None:
        """Keep the largest footprint seen for the entry (it corrects later estimates), tell the policy
        the current one, and tell watchers when it moved by more than a MiB."""
        if parked:
            self._parked_measured[model] = max(footprint, self._parked_measured.get(model, 0))
            self.policy.measured(model, footprint, parked=True)
            if (instance := self.instances.get(model)) is not None:
                self._publish(instance, "measured")
            return
        before = self._measured.get(model, 0)
        self._measured[model] = max(footprint, before)
        self.policy.measured(model, footprint)
        self._trim_spare()
        instance = self.instances.get(model)
        if instance is not None and abs(self._measured[model] - before) > 2**20:
            self._publish(instance, "measured")

    def _measure(self) -> None:
        """Measure idle instances only: a busy one is using both cores, and its footprint is not moving."""
        for name, resident in self.policy.residents.items():
            inst = self.instances.get(name)
            if resident.phase in (InstanceState.READY, InstanceState.PARKED) and not resident.in_flight and inst and inst.handle \
                    and inst.handle.alive and inst.parked == (resident.phase is InstanceState.PARKED):
                footprint = self._footprint(name, inst.handle.pid)
                if footprint:
                    self._record_footprint(name, footprint, parked=inst.parked)

    # -- status -------------------------------------------------------------------------------------------
    def _publish_usage(self, model: str) -> None:
        instance = self.instances.get(model)
        if instance is not None:
            self._publish(instance, "usage")

    def _publish(self, instance: ModelInstance, event: str, **extra: Any) -> None:
        if not self.events.listened:
            return  # describing an instance is not free, and this runs twice per request
        self.events.publish(event, model=instance.name, instance=self.describe(instance.name),
                            pool=self._totals(), **extra)

    def _totals(self) -> dict[str, int]:
        """Budget figures. The warm spare is not reserved (the next load adopts it, inside that load's
        own reservation) and is only started when the budget has room for it; ``spare`` shows it."""
        measured = sum(self._measured.get(n, 0) for n, r in self.policy.residents.items() if r.phase is InstanceState.READY)
        parked = sum(r.bytes for r in self.policy.residents.values() if r.phase is InstanceState.PARKED)
        spare = self._spare_bytes if self._spare is not None else 0
        return {"budget": self.policy.budget, "reserved": self.policy.reserved, "measured": measured,
                "parked": parked, "spare": spare}

    def describe(self, name: str) -> dict[str, Any]:
        entry = self.catalog.entries.get(name)
        inst = self.instances.get(name)
        resident = self.policy.residents.get(name)
        status = inst.status() if inst else {"name": name, "handle": None, "state": None, "pid": None}
        status["state"] = state_of(inst.current_state if inst else None, resident.phase if resident else None,
                                   quarantined=name in self._quarantine).value
        if name in self._quarantine:
            status["quarantined"] = self._quarantine[name][1]
        now = self.clock()
        keep = None
        if resident is not None:
            keep = self.policy.keep_alive_of(resident)
        status.update({
            "active": name == self.active_name,
            "memory": {"estimate": entry.estimate.as_dict() if entry and entry.estimate else None,
                       "measured": self._measured.get(name) if resident else None,
                       "gpu": self._gpu_bytes.get(name) if resident and self.gpu.available else None,
                       "reserved": resident.bytes if resident else 0},
            "in_flight": resident.in_flight if resident else 0,
            "pinned": bool(resident and resident.pinned) or bool(entry and entry.pinned),
            "keep_alive": keep,
            "expires_in": (max(0.0, keep - (now - resident.last_used))
                           if resident and keep is not None and keep >= 0 and not resident.pinned
                           and not resident.in_flight else None),
            "last_used_ago": (now - resident.last_used) if resident else None,
            "evictions": self.evictions.get(name, 0),
            "crashes": inst.crashes if inst else 0,
            "culprits": self.culprits.count(name),  # fingerprints of requests that crashed it: refused
            "settings": entry.describe()["settings"] if entry else None,
            "error": entry.error if entry and not entry.valid else status.get("last_error"),
        })
        return status

    def status(self) -> dict[str, Any]:
        names = list(dict.fromkeys([*self.catalog.entries, *self.instances]))
        return {**self.policy.status(), **self._totals(), "active": self.active_name,
                "instances": [self.describe(n) for n in names]}
