"""One model instance: a catalog entry, its current worker, its request queue and its statistics.

The instance is what every dialect talks to. It hides the worker's life from them:

- **Started by the pool only** (``load``), so every worker is accounted for in the memory budget;
  concurrent loads share one start. A worker that dies by itself is reported to the pool
  (``on_exit``); the crash stays visible in ``last_exit``, ``restarts`` and the state.
- **One generation at a time** — or ``--parallelrequests N`` at once, which the worker batches in one
  context — and KoboldCpp ``--multiuser`` semantics beyond: up to ``queue_limit`` requests wait, more get
  ``Busy`` (503). A request whose worker ended while it waited
  (a crash, a frozen worker killed by the heartbeat) gets ``RequestNotStarted``, not the crash: it never
  ran, and the serving path runs it on the replacement (``warren/api/serving.py``).
- **Hooks, not dialect rules**: a request may bring an ``abort`` event (set, it ends early; set before
  its turn came, it never reaches the worker) and an ``on_text`` callback (every piece of text the worker
  sends, streamed or not). KoboldCpp's genkey polling and abort are built on them, in its dialect
  (``warren/api/kobold/genkeys.py``); ``last`` and the counters feed its ``/api/extra/perf``.
- **Culprits**: a request whose fingerprint crashed this model's worker before is refused
  (``warren/pool/culprits.py``); a crash during a generation is reported with that generation's
  parameters, so the pool charges it to the request.

Admission, eviction and keep-alive are the pool's (``warren/pool/policy.py``); this class only runs
one model's worker and its requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from warren.embeddings import EmbeddingResult, EmbedRequest
from warren.errors import Busy, RequestNotStarted, WarrenError, WorkerClosed, WorkerCrashed, WorkerNotPlaced
from warren.model_info import ModelInfo
from warren.params import FinishReason, GenerationParams, GenerationResult, TokenLogprob
from warren.pool.compute import ComputeShares
from warren.pool.culprits import Culprits
from warren.pool.state import InstanceState
from warren.settings import ModelSettings
from warren.worker import protocol as p
from warren.worker.handle import WorkerHandle
from warren.worker.launcher import LOCAL, ExitKind, Launcher

log = logging.getLogger(__name__)

SAVE_TIMEOUT = 10.0  # s for a worker to write its KV state before a stop: ~25 MB for a 1,000-token chat here




class ModelInstance:
    def __init__(self, settings: ModelSettings, *, launcher: Launcher | None = None, queue_limit: int = 6,
                 heartbeat: bool = True,
                 on_exit: Callable[[ModelInstance, WarrenError, GenerationParams | None], None] | None = None,
                 on_progress: Callable[[ModelInstance], None] | None = None, culprits: Culprits | None = None,
                 compute: ComputeShares | None = None, disk_tier: tuple[str, int] = ("", 0)) -> None:
        self.settings = settings
        self.disk_tier = disk_tier  # --kvcache-dir, --kvcache-size: where a stopped worker's KV state goes
        self.launcher = launcher  # what starts its workers (``WorkerHandle``'s default: a local subprocess)
        self.on_progress = on_progress  # told as the worker reports load progress
        # Told when a worker ends by itself (crash), not when we stop it, with the generation that was
        # running if the crash happened during one ("crashed" exits only).
        self.on_exit = on_exit
        self.culprits = culprits
        self.compute = compute  # the pool's cores, shared among generating workers (warren/pool/compute.py)
        self._cores_lock = asyncio.Lock()
        self._cores_users = 0
        self._cores_share: contextlib.AbstractAsyncContextManager[object] | None = None
        self.name = settings.name
        self.queue_limit = queue_limit
        self.heartbeat = heartbeat
        self.handle: WorkerHandle | None = None
        self.generation = 0  # bumps with every new worker: the handle is "name@generation"
        self.state = InstanceState.UNLOADED
        self.restarts = 0
        self.last_exit = ""
        self.last_exit_kind: ExitKind | None = None
        self.last_error = ""
        self.last_used = 0.0
        self.last: GenerationResult | None = None  # the last generation that ended (KoboldCpp's perf reads it)
        self.created = time.monotonic()
        self._starting: asyncio.Task[WorkerHandle] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._reported: weakref.WeakSet[WorkerHandle] = weakref.WeakSet()
        self.loads = 0
        self.crashes = 0
        self.requests = 0
        self.tokens = 0
        # One request at a time, or --parallelrequests at once (the worker batches them in one context).
        self._slot = asyncio.Semaphore(max(1, settings.parallel))
        self._running = 0
        self._waiting = 0

    # -- identity and status ------------------------------------------------------------------------
    @property
    def handle_id(self) -> str:
        return f"{self.name}@{self.generation}"

    @property
    def model_info(self) -> ModelInfo:
        """What the worker reported about its model; before a load, what the settings say."""
        if self.handle is not None and self.handle.model_info is not None:
            return self.handle.model_info
        return ModelInfo(n_ctx=self.settings.context_size)

    @property
    def context_size(self) -> int:
        return self.model_info.n_ctx or self.settings.context_size

    @property
    def node(self) -> str | None:
        """The node its worker runs (or last ran) on; None before its first worker."""
        return self.handle.node if self.handle is not None else None

    @property
    def busy(self) -> bool:
        return self._running > 0

    @property
    def queued(self) -> int:
        return self._waiting

    def status(self) -> dict[str, Any]:
        h = self.handle
        return {
            "name": self.name, "handle": self.handle_id if h else None, "state": self.current_state.value,
            "pid": h.pid if h and h.alive else None, "node": self.node, "progress": h.progress if h else 0.0,
            "load_seconds": h.load_seconds if h else None, "in_flight": self._running, "queued": self._waiting,
            "restarts": self.restarts, "last_exit": self.last_exit or None, "last_exit_kind": self.last_exit_kind,
            "last_error": self.last_error or None,
            "context_size": self.context_size, "path": str(self.settings.path),
        }

    @property
    def current_state(self) -> InstanceState:
        """Its own state, ``busy`` while a generation holds its turn (the shown one: ``pool/state.py``)."""
        if self.state is InstanceState.READY and self.busy:
            return InstanceState.BUSY
        return self.state

    # -- worker lifecycle ---------------------------------------------------------------------------
    def require_ready(self) -> WorkerHandle:
        """The loaded worker, or the error that explains why there is none. Only the pool starts workers."""
        h = self.handle
        if h is not None and h.alive and self.state is InstanceState.READY:
            return h
        if h is not None and h.exit_error is not None:
            raise h.exit_error
        raise WorkerClosed(f"model {self.name!r} is not loaded", model=self.name)

    async def load(self, spare: WorkerHandle | None = None, prefault_bytes: int = 0,
                   prefault_after: Sequence[int] = (), *, node: str = LOCAL, reserve: int = 0) -> WorkerHandle:
        """Start a worker (or adopt a warm ``spare``) and load the model; concurrent callers share one load.
        ``prefault_bytes``, ``prefault_after``: the KV cache's estimated size, and the pids of the workers
        this load replaces (``warren/worker/prefault.py``); ``node``, ``reserve``: where a new worker goes
        and the bytes it holds there (the pool's placement)."""
        if self.handle is not None and self.handle.alive and self.state is InstanceState.READY:
            return self.handle
        if self._starting is None or self._starting.done():
            self._starting = asyncio.create_task(self._start(spare, prefault_bytes, prefault_after, node, reserve),
                                                 name=f"start-{self.name}")
        return await asyncio.shield(self._starting)

    @property
    def offloaded(self) -> bool:
        """Its layers are on a GPU: asked for (``--gpulayers``) and the worker's engine can offload."""
        info = self.handle.model_info if self.handle is not None else None
        return info is not None and info.gpu_offload and self.settings.gpu_layers > 0

    @property
    def parked(self) -> bool:
        return self.state is InstanceState.PARKED and self.handle is not None and self.handle.alive

    def park(self, keep_state_bytes: int = -1, keep_context: bool = False) -> Awaitable[int]:
        """Parked from now on (no request or load sees it ready); the worker gives back its weights' pages
        when it gets to the returned request, and its context unless ``keep_context`` lets it keep the context
        whole within ``keep_state_bytes`` — else it keeps its KV state if that takes at most
        ``keep_state_bytes`` (the request's result: the bytes kept). A later ``load`` resumes it: same worker,
        same handle, the same context or a new one (with the state put back)."""
        handle = self.require_ready()
        self.state = InstanceState.PARKED
        log.info("parking model=%s handle=%s pid=%s", self.name, self.handle_id, handle.pid)
        return handle.park(keep_state_bytes, keep_context)

    async def drop_state(self) -> None:
        """A parked worker frees the KV state it kept."""
        if self.parked and self.handle is not None:
            await self.handle.drop_state()

    async def _start(self, spare: WorkerHandle | None, prefault_bytes: int, prefault_after: Sequence[int],
                     node: str = LOCAL, reserve: int = 0) -> WorkerHandle:
        started = time.perf_counter()
        resuming = self.parked
        if resuming:
            assert self.handle is not None
            handle = self.handle
        else:
            if self.handle is not None:
                self._record_exit(self.handle)
                await self.handle.stop()
            self.generation += 1
            self.state = InstanceState.STARTING
            if spare is not None and spare.alive:
                handle = spare
                handle.adopt(self.settings)
                self.handle = handle
            else:
                handle = WorkerHandle(self.settings, launcher=self.launcher, node=node, reserve=reserve,
                                      heartbeat=self.heartbeat)
                self.handle = handle
            if self.on_progress is not None:
                handle.on_progress = lambda: self.on_progress(self) if self.on_progress else None
        handle.disk_tier = self.disk_tier
        try:
            if handle is not spare and not resuming:
                await handle.start()
            self.state = InstanceState.LOADING
            log.info("loading model=%s handle=%s pid=%s", self.name, self.handle_id, handle.pid)
            await handle.load(prefault_bytes, prefault_after)
        except WorkerNotPlaced as exc:  # nothing was started: nothing about the model either
            self.state = InstanceState.UNLOADED
            self.last_error = exc.message
            await handle.stop()
            raise
        except WarrenError as exc:
            self.state = InstanceState.CRASHED if isinstance(exc, WorkerCrashed) else InstanceState.LOAD_FAILED
            self.last_error = exc.message
            self.last_exit_kind = (handle.exit_kind or ExitKind.CRASHED) if isinstance(exc, WorkerCrashed) \
                else ExitKind.LOAD_FAILED
            if isinstance(exc, WorkerCrashed):
                self.last_exit = exc.message
            await handle.stop()
            raise
        self.state = InstanceState.READY
        self.last_error = ""
        self.loads += 1
        if not resuming:
            self._watcher = asyncio.create_task(self._watch(handle), name=f"watch-{self.name}")
        info = handle.model_info
        measured = info.extra.get("flash_attention_measured") if info is not None else None
        log.info("model %s model=%s handle=%s pid=%s load_s=%.2f total_s=%.2f flash_attention=%s%s",
                 "resumed" if resuming else "ready", self.name, self.handle_id, handle.pid, handle.load_seconds,
                 time.perf_counter() - started, info.flash_attention if info is not None else "?",
                 f" (measured tokens/s at {measured['depth']} of context: on {measured['on']:.1f}, off "
                 f"{measured['off']:.1f})" if measured else "")
        kv = info.extra.get("kv_state") if info is not None else None
        if isinstance(kv, dict) and kv.get("refused"):
            log.warning("KV state file ignored model=%s reason=%s", self.name, kv["refused"])
        if isinstance(kv, dict) and kv.get("from"):
            log.info("KV state restored model=%s from=%s tokens=%s", self.name, kv["from"], kv.get("tokens"))
        return handle

    async def _watch(self, handle: WorkerHandle) -> None:
        """Notice a worker that ends by itself, idle or busy, and tell the pool at once."""
        await handle.exited.wait()
        self._report_crash(handle)

    def _report_crash(self, handle: WorkerHandle) -> None:
        """Once per worker: record its crash and tell the pool, whichever notices first (the watcher, or
        a request that was running on it), so the very next request already sees it gone."""
        if handle is not self.handle or handle in self._reported or not isinstance(handle.exit_error, WorkerCrashed):
            return
        self._reported.add(handle)
        self.crashes += 1
        self.state = InstanceState.CRASHED
        self.last_exit = handle.exit_error.message
        self.last_exit_kind = handle.exit_kind or ExitKind.CRASHED
        if self.on_exit is not None:
            self.on_exit(self, handle.exit_error, handle.crashed_during)

    def _record_exit(self, handle: WorkerHandle) -> None:
        if handle.exit_error is not None and isinstance(handle.exit_error, WorkerCrashed):
            self.restarts += 1
            self.last_exit = handle.exit_error.message

    async def stop(self) -> None:
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError, WarrenError):
                await self._starting
        if self.handle is not None:
            await self._save_state(self.handle)
            self.state = InstanceState.STOPPING
            await self.handle.stop()
        if self._watcher is not None:
            self._watcher.cancel()
        self.state = InstanceState.UNLOADED

    async def _save_state(self, handle: WorkerHandle) -> None:
        """With a disk tier, an idle worker that is loaded or parked writes its conversation's KV state there
        before it is stopped (``kvfile.py``): the next worker for this model reads it back. Until the write ends
        the worker keeps the memory it has (a state kept while parked is already counted; one copied out of a
        context is a moment's extra, as a stop's own grace is). A busy or unanswering worker is stopped anyway."""
        if not self.disk_tier[0] or not handle.alive or self.busy or \
                self.state not in (InstanceState.READY, InstanceState.PARKED):
            return
        try:
            written = await handle.save_state(SAVE_TIMEOUT)
        except WarrenError as exc:
            log.warning("could not write the KV state to disk model=%s error=%s", self.name, exc.message)
            return
        if written:
            log.info("KV state written to disk model=%s state_mib=%.1f dir=%s", self.name, written / 2**20,
                     self.disk_tier[0])

    # -- queueing (KoboldCpp --multiuser) -------------------------------------------------------------
    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        if self._slot.locked() and self._waiting >= self.queue_limit:
            raise Busy(model=self.name)
        self._waiting += 1
        try:
            await self._slot.acquire()
        finally:
            self._waiting -= 1
        self._running += 1
        try:
            yield
        finally:
            self._running -= 1
            self._slot.release()

    # -- generation ---------------------------------------------------------------------------------
    async def generate(self, params: GenerationParams, *, stream: bool, abort: asyncio.Event | None = None,
                       on_start: Callable[[], None] | None = None, on_text: Callable[[str], None] | None = None
                       ) -> AsyncIterator[str | GenerationResult]:
        """Yield text pieces (when ``stream``) and finally the ``GenerationResult``.

        ``abort`` set ends the generation early (finish reason ``abort``); set before the request's turn
        came, the request ends at its turn with empty text, never reaching the worker. ``on_start`` is told
        when the turn has come (it was queued until then); ``on_text`` sees every piece of text the worker
        sends, streamed or not.

        ``RequestNotStarted`` when the worker this request queued for died by its turn (crashed, killed
        as frozen or hung): it was never sent, so the caller may acquire the model again and retry it on
        a new worker. A worker we stopped on purpose (shutdown) gives its ``WorkerClosed`` as before:
        loading the model again would undo the stop."""
        queued_for = self.handle
        if self.culprits is not None:
            self.culprits.check(self.name, params)
        async with self._turn():
            if abort is not None and abort.is_set():
                yield GenerationResult("", FinishReason.ABORT, 0, 0, 0.0, 0.0, 0)
                return
            await self._still_there(queued_for)
            if on_start is not None:
                on_start()
            handle = self.require_ready()
            self.last_used = time.monotonic()
            try:
                async with self._cores(handle):
                    async for item in self._run(handle, params, stream, abort or asyncio.Event(), on_text):
                        yield item
            except WorkerCrashed:
                self._report_crash(handle)
                raise
            finally:
                self.last_used = time.monotonic()

    async def _still_there(self, queued_for: WorkerHandle | None) -> None:
        """At a request's turn: ``RequestNotStarted`` if the worker it queued for died meanwhile (crashed,
        killed as frozen or hung), the stop's error if it was stopped on purpose."""
        if queued_for is not None and (self.handle is not queued_for or not queued_for.alive):
            await queued_for.exited.wait()  # its exit is classified before anyone acts on it
            cause = queued_for.exit_error
            if not isinstance(cause, WorkerCrashed):
                raise cause or WorkerClosed(f"model {self.name!r} was unloaded", model=self.name)
            self._report_crash(queued_for)  # the pool must know before the caller acquires again
            raise RequestNotStarted(f"the worker for model {self.name!r} ended before this request reached "
                                    f"it ({cause.message})", cause=cause, model=self.name)

    @contextlib.asynccontextmanager
    async def _cores(self, handle: WorkerHandle) -> AsyncIterator[None]:
        """A share of the cores while this worker generates: at most ``--threads`` of them, and one for a
        model offloaded to a GPU (the GPU does the work). The worker holds one share for all the requests it
        serves at once (``--parallelrequests``): the first takes it, the last gives it back. Without a pool's
        compute (tests), nothing is shared."""
        if self.compute is None:
            yield
            return
        async with self._cores_lock:  # the first request of the worker may wait for a core; the others join
            if self._cores_users == 0:
                share = self.compute.running_on(self.handle_id, 1 if self.offloaded else self.settings.threads,
                                                lambda s: handle.set_threads(s.threads, s.cores))
                await share.__aenter__()
                self._cores_share = share
            self._cores_users += 1
        try:
            yield
        finally:
            self._cores_users -= 1
            if self._cores_users == 0 and self._cores_share is not None:
                share, self._cores_share = self._cores_share, None
                await share.__aexit__(None, None, None)

    async def _run(self, handle: WorkerHandle, params: GenerationParams, stream: bool, abort: asyncio.Event,
                   on_text: Callable[[str], None] | None) -> AsyncIterator[str | GenerationResult]:
        frames = handle.generate(params, stream, abort, on_done=self._record)
        try:
            async for frame in frames:
                if isinstance(frame, p.Token):
                    if on_text is not None:
                        on_text(frame.text)
                    if stream:
                        yield frame.text
                else:
                    yield _result(frame)
        finally:
            await frames.aclose()

    def _record(self, done: p.Done) -> None:
        """Statistics of every generation that ended, also when nobody was left to read it."""
        self.last = _result(done)
        self.requests += 1  # generations that ended, aborted ones included
        self.tokens += self.last.completion_tokens

    async def complete(self, params: GenerationParams, abort: asyncio.Event | None = None) -> GenerationResult:
        result: GenerationResult | None = None
        async for item in self.generate(params, stream=False, abort=abort):
            if isinstance(item, GenerationResult):
                result = item
        assert result is not None
        return result

    # -- embeddings ---------------------------------------------------------------------------------
    async def embed(self, request: EmbedRequest) -> EmbeddingResult:
        """All of ``request``'s inputs in one worker round trip, in the model's turn like a generation (the worker
        runs it on its main thread; it queues behind generations, and ``Busy`` past the queue limit), on a share
        of the cores. A worker that died before the turn came gives ``RequestNotStarted``, as a generation."""
        queued_for = self.handle
        async with self._turn():
            await self._still_there(queued_for)
            handle = self.require_ready()
            self.last_used = time.monotonic()
            try:
                async with self._cores(handle):
                    return await handle.embed(request)
            except WorkerCrashed:
                self._report_crash(handle)
                raise
            finally:
                self.last_used = time.monotonic()

    # -- tokens -------------------------------------------------------------------------------------
    async def tokenize(self, text: str, special: bool = True) -> list[int]:
        return list(await self.require_ready().call(p.Tokenize, text=text, special=special))

    async def detokenize(self, ids: list[int]) -> str:
        return str(await self.require_ready().call(p.Detokenize, ids=ids))


def _result(done: p.Done) -> GenerationResult:
    return GenerationResult(done.text, FinishReason(done.finish_reason), done.prompt_tokens,
                            done.completion_tokens, done.prompt_seconds, done.generation_seconds, done.seed,
                            done.cached_tokens, tuple(TokenLogprob.from_wire(e) for e in done.logprobs))
