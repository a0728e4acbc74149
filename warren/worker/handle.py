"""The supervisor's side of one worker: handshake, requests, liveness, stop, and what its end means.

A ``WorkerHandle`` owns exactly one worker and everything attached to it: the ``WorkerProcess`` and
``FrameChannel`` its launcher gave (``warren/worker/launcher.py``: a local subprocess in production,
threads of the test process in tests), the task that reads frames, and the heartbeat. All of them are
stored on the handle and ended by ``stop()``; none is left unowned. Nothing here depends on how the
worker runs: spawning, signals, the output ring and the process-state probe are the launcher's.

Contracts:
- ``start()`` returns once the child said ``Hello`` (interpreter up, engine library imported).
- ``load()`` returns the model description only after ``Ready``; progress is logged and kept in
  ``progress``.
- When the worker ends, every request still waiting gets an error: ``WorkerClosed`` if we stopped it,
  ``WorkerCrashed`` naming the model and the signal or exit status otherwise (``classify_exit`` gives
  ``exit_kind``). The last lines of its output go to the log. A crash (``ExitKind.CRASHED``) while a
  generation was running leaves that generation's parameters in ``crashed_during``, so the pool can
  charge the crash to the request.
- Only liveness kills a worker: the heartbeat's verdict (``warren/worker/liveness.py``: frozen, hung) and
  the load timeout. Any other request that gets no answer in time — a Tokenize, a Park — fails alone
  with ``Busy``: a request waiting its turn in the worker says nothing about whether the worker lives.
- ``stop()`` closes the channel (the child exits on EOF), then escalates SIGTERM → SIGKILL and reaps.
  It survives cancellation, so it is safe in ``finally`` blocks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from warren.embeddings import EmbeddingResult, EmbedRequest
from warren.errors import (
    Busy,
    InvalidRequest,
    WarrenError,
    WorkerClosed,
    WorkerCrashed,
    WorkerLoadFailed,
)
from warren.model_info import ModelInfo
from warren.params import GenerationParams
from warren.settings import ModelSettings
from warren.worker import protocol as p
from warren.worker.channel import ChannelClosed, FrameChannel
from warren.worker.launcher import LOCAL, ExitKind, Launcher, WorkerProcess, classify_exit
from warren.worker.liveness import Liveness, LivenessRule, ProcessProbe, Verdict
from warren.worker.local import LocalLauncher

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 60.0  # interpreter start + importing llama_cpp; seconds on a loaded machine
LOAD_TIMEOUT = 600.0  # a large model from a slow disk
# The reader thread answers pings even mid-decode, so a Ping a second costs nothing and bounds how long a
# stopped worker holds its queue: asked at the next beat, judged frozen FROZEN_AFTER (1.5 s) later.
HEARTBEAT_INTERVAL = 1.0
CALL_TIMEOUT = 60.0  # Tokenize/Detokenize/Park: past this the request fails (Busy); the worker is left alone
STOP_GRACE = 3.0  # after EOF a healthy worker exits in milliseconds; a busy one gets this long


class WorkerHandle:
    def __init__(self, settings: ModelSettings, *, launcher: Launcher | None = None, node: str = LOCAL,
                 reserve: int = 0, heartbeat: bool = True, load_timeout: float = LOAD_TIMEOUT,
                 heartbeat_interval: float = HEARTBEAT_INTERVAL, liveness: LivenessRule | None = None,
                 probe: ProcessProbe | None = None) -> None:
        """``launcher``: what starts the worker (a local subprocess unless given); ``node``, ``reserve``:
        where, and the bytes it holds there (a placing launcher's; ``Launcher.start``). ``liveness``: the
        heartbeat's thresholds; ``probe`` replaces the launcher's reading of the worker's process state
        for the verdict (``warren/worker/liveness.py``), for tests of the verdict."""
        self.settings = settings
        self.name = settings.name
        self.launcher: Launcher = launcher or LocalLauncher()
        self.node = node
        self.reserve = reserve
        self.worker: WorkerProcess | None = None
        self.channel: FrameChannel | None = None
        self.progress = 0.0
        self.model_info: ModelInfo | None = None
        self.threads = settings.threads  # the share of the cores it was last given (warren/pool/compute.py)
        self.cores: tuple[int, ...] = ()  # (): not pinned yet
        self.load_seconds = 0.0
        self.started_at = 0.0
        self.disk_tier: tuple[str, int] = ("", 0)  # --kvcache-dir and its bound, sent with each Load ("": none)
        self._pending: dict[int, asyncio.Queue[p.Frame | WarrenError]] = {}
        self._ids = itertools.count(1)
        self._hello: asyncio.Future[p.Hello] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        self._kill_reason = ""
        self._kill_kind = ExitKind.HUNG
        self._heartbeat = heartbeat
        self._beating: asyncio.Task[None] | None = None
        self._load_timeout = load_timeout
        self._heartbeat_interval = heartbeat_interval
        self._liveness = Liveness(liveness)
        self._probe = probe
        self.exit_error: WarrenError | None = None
        self.on_progress: Callable[[], None] | None = None
        self.exit_kind: ExitKind | None = None  # once ended
        self.exited = asyncio.Event()
        self._generating: dict[int, GenerationParams] = {}  # Generate requests the worker has not ended
        self.crashed_during: GenerationParams | None = None  # the generation running when it crashed
        self.parked_context = False  # the last park kept the whole context (``park``)

    # -- identity ------------------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        """The worker's process id (0 before it started): logs, status, and ``prefault_after``."""
        return self.worker.pid if self.worker is not None else 0

    @property
    def stderr_tail(self) -> collections.deque[str]:
        """The last lines the worker wrote (llama.cpp's log)."""
        return self.worker.output if self.worker is not None else collections.deque()

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.worker, self.channel = await self.launcher.start(self.settings, self.node, self.reserve)
        self.started_at = time.monotonic()
        self._hello = asyncio.get_running_loop().create_future()
        self._tasks.append(asyncio.create_task(self._read_frames(self.channel), name=f"frames-{self.name}"))
        log.debug("worker spawned model=%s node=%s pid=%s", self.name, self.node, self.pid)
        try:
            await asyncio.wait_for(asyncio.shield(self._hello), HELLO_TIMEOUT)
        except TimeoutError:
            await self.stop()
            raise WorkerLoadFailed(f"the worker for model {self.name!r} did not start within {HELLO_TIMEOUT:.0f} s",
                                   hint=self._tail_hint()) from None

    def adopt(self, settings: ModelSettings) -> None:
        """A warm spare (started, nothing loaded) becomes this model's worker."""
        self.settings = settings
        self.name = settings.name

    async def load(self, prefault_bytes: int = 0, prefault_after: Sequence[int] = ()) -> ModelInfo:
        """``prefault_bytes``/``prefault_after``: see ``warren/worker/prefault.py``."""
        self.parked_context = False
        frame = await self._request(p.Load(id=next(self._ids), settings=self.settings.as_wire(),
                                           prefault_bytes=prefault_bytes, prefault_after=list(prefault_after),
                                           kvcache_dir=self.disk_tier[0], kvcache_bytes=self.disk_tier[1]),
                                   self._load_timeout, kill_on_timeout=True)
        assert isinstance(frame, p.Ready)
        self.model_info = ModelInfo.from_wire(frame.model)
        self.load_seconds = frame.load_seconds
        self.progress = 1.0
        if self._heartbeat and self._beating is None:  # once per worker: a resumed (parked) one beats already
            self._beating = asyncio.create_task(self._beat(), name=f"heartbeat-{self.name}")
            self._tasks.append(self._beating)
        return self.model_info

    def set_threads(self, threads: int, cores: tuple[int, ...]) -> None:
        """The worker's share of the cores (``warren/pool/compute.py``): sent at once, ahead of any frame sent
        after it, and applied by the worker before its next decode step. Nothing to wait for."""
        if self.channel is not None and self.exit_error is None:
            with contextlib.suppress(ConnectionError, OSError):
                self.channel.send_nowait(p.SetThreads(threads=threads, cores=list(cores)))
        self.threads = threads
        self.cores = cores

    async def park(self, keep_state_bytes: int = -1, keep_context: bool = False) -> int:
        """Ask the worker to give back its weights' pages, keeping the model (``Park``): its context too when
        ``keep_context`` and it takes at most ``keep_state_bytes`` (negative: any), else only its cached
        sequences' KV state within that bound. The bytes kept for the conversation (``parked_context`` says
        which)."""
        answer = await self._request(p.Park(id=next(self._ids), keep_state_bytes=keep_state_bytes,
                                            keep_context=keep_context), CALL_TIMEOUT)
        value = answer.value if isinstance(answer, p.Result) else None
        self.parked_context = bool(value.get("context")) if isinstance(value, dict) else False
        return int(value.get("state_bytes", 0)) if isinstance(value, dict) else 0

    async def drop_state(self) -> None:
        """Ask a parked worker to free the KV state it kept (``DropState``)."""
        await self._request(p.DropState(id=next(self._ids)), CALL_TIMEOUT)

    async def save_state(self, timeout: float) -> int:
        """Ask the worker to write its cached conversation to the disk tier (``SaveState``) before it is stopped;
        the bytes written."""
        answer = await self._request(p.SaveState(id=next(self._ids)), timeout)
        value = answer.value if isinstance(answer, p.Result) else None
        return int(value.get("bytes", 0)) if isinstance(value, dict) else 0

    async def kill(self, reason: str, kind: ExitKind = ExitKind.HUNG) -> None:
        """End a misbehaving worker now; waiters get ``WorkerCrashed`` with ``reason``; ``kind`` becomes
        its ``exit_kind`` (hung, frozen). SIGKILL ends a stopped process too."""
        log.error("killing worker model=%s pid=%s kind=%s reason=%s", self.name, self.pid, kind, reason)
        self._kill_reason, self._kill_kind = reason, kind
        if self.worker is not None and self.worker.returncode is None:
            self.worker.kill()
        await self.exited.wait()

    @property
    def alive(self) -> bool:
        return self.worker is not None and self.worker.returncode is None and not self.exited.is_set()

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Close the channel, wait, SIGTERM, wait, SIGKILL, reap. Cancellation-safe."""
        self._stopping = True
        task = asyncio.ensure_future(self._stop(grace))
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            await task
            raise

    async def _stop(self, grace: float) -> None:
        if self.channel is not None:
            self.channel.close()
        worker = self.worker
        if worker is not None and worker.returncode is None:
            for sig in (None, "terminate", "kill"):
                if sig is not None:
                    log.info("worker did not exit; sending SIG%s model=%s pid=%s", sig[:4].upper(), self.name,
                             self.pid)
                    getattr(worker, sig)()
                try:
                    await asyncio.wait_for(worker.wait(), grace)
                    break
                except TimeoutError:
                    continue
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.exited.wait(), grace)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if worker is not None:
            await worker.release()

    # -- requests -------------------------------------------------------------------------------------
    async def _request(self, frame: p.Frame, timeout: float | None = None, *, kill_on_timeout: bool = False
                       ) -> p.Frame:
        """Send a one-answer request and return its answer frame (or raise its error).

        Past ``timeout`` only this request fails (``Busy``; a late answer is dropped by ``_read_frames``),
        unless ``kill_on_timeout``: the load timeout is the one request whose silence means a hang."""
        queue = self._open(frame.id)
        try:
            await self._send(frame)
            item = await asyncio.wait_for(queue.get(), timeout)
        except TimeoutError:
            if not kill_on_timeout:
                raise Busy(f"the worker for model {self.name!r} did not answer {frame.type_name} within "
                           f"{timeout:g} s; it is busy, and was left running", model=self.name) from None
            await self.kill(f"it did not answer {frame.type_name} within {timeout:g} s")
            raise self.exit_error or WorkerCrashed(f"the worker for model {self.name!r} hung") from None
        finally:
            self._pending.pop(frame.id, None)
        return self._unwrap(item)

    async def call(self, frame_type: type[p.Frame], *, timeout: float = CALL_TIMEOUT, **fields: Any) -> Any:
        """Tokenize/Detokenize and friends: one request, one ``Result``. The worker answers them on a
        thread of their own, beside a running generation (``warren/worker/child.py``)."""
        frame = await self._request(frame_type(id=next(self._ids), **fields), timeout)
        assert isinstance(frame, p.Result)
        return frame.value

    async def embed(self, request: EmbedRequest) -> EmbeddingResult:
        """One ``Embed``, one ``Embeddings``: no timeout, as a generation has none (it runs on the worker's main
        thread; the heartbeat still watches the worker). Cancelled here (the client left), it is cancelled in
        the worker too, which stops before its next decode."""
        request_id = next(self._ids)
        try:
            frame = await self._request(p.Embed(id=request_id, request=request.as_wire()))
        except asyncio.CancelledError:
            if self.alive and self.channel is not None:
                with contextlib.suppress(ConnectionError, OSError):
                    self.channel.send_nowait(p.Cancel(id=request_id))
            raise
        assert isinstance(frame, p.Embeddings)
        return EmbeddingResult(frame.vectors, frame.dim, tuple(frame.tokens), frame.seconds)

    async def generate(self, params: GenerationParams, stream: bool, abort: asyncio.Event | None = None,
                       on_done: Callable[[p.Done], None] | None = None) -> AsyncIterator[p.Token | p.Done]:
        """Yield ``Token`` frames (batched ones when not streaming) and finally the ``Done`` frame.

        ``abort`` set, or leaving the loop early (client gone), sends ``Cancel``. ``on_done`` sees the
        ``Done`` frame in both cases, also when nobody is left to read it (statistics stay true).
        """
        request_id = next(self._ids)
        queue = self._open(request_id)
        finished = False
        watcher = asyncio.create_task(self._cancel_on(abort, request_id)) if abort is not None else None
        self._generating[request_id] = params
        try:
            await self._send(p.Generate(id=request_id, params=params.as_wire(), stream=stream))
            while True:
                item = await queue.get()
                if isinstance(item, WarrenError | p.Failed):
                    finished = True  # the request is over in the worker (or the worker is gone)
                frame = self._unwrap(item)
                if isinstance(frame, p.Done):
                    finished = True
                    if on_done is not None:
                        on_done(frame)
                    yield frame
                    return
                if isinstance(frame, p.Token):
                    yield frame
        finally:
            if watcher is not None:
                watcher.cancel()
            if finished:
                self._pending.pop(request_id, None)
                self._generating.pop(request_id, None)
            else:
                self._abandon(request_id, queue, on_done)

    def _abandon(self, request_id: int, queue: asyncio.Queue[p.Frame | WarrenError],
                 on_done: Callable[[p.Done], None] | None) -> None:
        """The reader left mid-generation: cancel it in the worker and let a task owned by this handle
        collect its end, so the caller is not held (it may be under cancellation itself)."""

        async def collect() -> None:
            try:
                with contextlib.suppress(WarrenError, OSError):
                    await self._send(p.Cancel(id=request_id))
                while True:
                    item = await queue.get()
                    if isinstance(item, p.Done) and on_done is not None:
                        on_done(item)
                    if isinstance(item, WarrenError | p.Done | p.Failed):
                        return
            finally:
                self._pending.pop(request_id, None)
                self._generating.pop(request_id, None)

        if self.alive:
            task = asyncio.get_running_loop().create_task(collect(), name=f"abandon-{self.name}-{request_id}")
            self._tasks.append(task)
            task.add_done_callback(lambda t: self._tasks.remove(t) if t in self._tasks else None)
        else:
            self._pending.pop(request_id, None)
            self._generating.pop(request_id, None)

    async def _cancel_on(self, abort: asyncio.Event, request_id: int) -> None:
        await abort.wait()
        with contextlib.suppress(WarrenError, OSError):
            await self._send(p.Cancel(id=request_id))

    def _open(self, request_id: int) -> asyncio.Queue[p.Frame | WarrenError]:
        if self.exit_error is not None:
            raise self.exit_error
        queue: asyncio.Queue[p.Frame | WarrenError] = asyncio.Queue()
        self._pending[request_id] = queue
        return queue

    async def _send(self, frame: p.Frame) -> None:
        if self.channel is None or self.exit_error is not None:
            raise self.exit_error or WorkerClosed(f"the worker for model {self.name!r} is not running")
        try:
            await self.channel.send(frame)
        except p.Unencodable as exc:
            raise InvalidRequest(f"the request cannot be passed to the worker: {exc}",
                                 hint="text must be valid Unicode (no lone surrogates), numbers in range") from None
        except (ConnectionError, OSError):
            await self.exited.wait()
            raise self.exit_error or WorkerClosed(f"the worker for model {self.name!r} is gone") from None

    @staticmethod
    def _unwrap(item: p.Frame | WarrenError) -> p.Frame:
        if isinstance(item, WarrenError):
            raise item
        if isinstance(item, p.Failed):
            raise WarrenError.from_wire(item.error)
        return item

    # -- background tasks -------------------------------------------------------------------------------
    async def _read_frames(self, channel: FrameChannel) -> None:
        reason = ""
        try:
            while True:
                frame = await channel.receive()
                if isinstance(frame, p.Hello):
                    if self._hello and not self._hello.done():
                        self._hello.set_result(frame)
                elif isinstance(frame, p.Pong):
                    self._liveness.ponged()
                elif isinstance(frame, p.Progress):
                    self.progress = frame.fraction
                    log.info("loading model=%s progress=%d%%", self.name, round(frame.fraction * 100))
                    if self.on_progress is not None:
                        self.on_progress()
                elif (queue := self._pending.get(frame.id)) is not None:
                    queue.put_nowait(frame)
        except ChannelClosed:
            pass  # EOF: the worker ended or closed its end
        except p.ProtocolError as exc:
            reason = f"it sent an invalid frame ({exc})"
            log.error("worker sent garbage; killing it model=%s pid=%s error=%s", self.name, self.pid, exc)
            if self.worker is not None and self.worker.returncode is None:
                self.worker.kill()
        except (ConnectionError, OSError):
            pass
        await self._on_exit(reason)

    async def _on_exit(self, reason: str) -> None:
        worker = self.worker
        returncode = None
        if worker is not None:
            try:
                returncode = await asyncio.wait_for(worker.wait(), 2.0 if not self._stopping else STOP_GRACE * 3)
            except TimeoutError:  # channel closed but the worker lingers: make sure it is gone
                worker.kill()
                returncode = await worker.wait()
        await asyncio.sleep(0)  # let the output reader take the last lines
        self.exit_kind, how = classify_exit(returncode, requested=self._stopping, protocol_error=reason,
                                            killed_for=self._kill_reason, killed_kind=self._kill_kind,
                                            lost=worker.lost if worker is not None else "")
        if self._stopping:
            self.exit_error = WorkerClosed(f"model {self.name!r} was unloaded", model=self.name)
        else:
            if self.exit_kind is ExitKind.CRASHED and self._generating:
                self.crashed_during = next(iter(self._generating.values()))
            self.exit_error = WorkerCrashed(f"the worker for model {self.name!r} crashed: {how}",
                                            hint=self._tail_hint(), model=self.name, returncode=returncode)
            log.error("worker crashed model=%s pid=%s exit=%s\n  last stderr lines:\n    %s", self.name,
                      self.pid, how, "\n    ".join(list(self.stderr_tail)[-15:]) or "(none)")
        if self._hello and not self._hello.done():
            self._hello.set_exception(self.exit_error)
            self._hello.exception()  # mark retrieved: start() may already have given up waiting
        for queue in self._pending.values():
            queue.put_nowait(self.exit_error)
        self.exited.set()

    async def _beat(self) -> None:
        """Each interval: ask (a Ping) when the last one was answered, else judge the silence from the
        process's state (``warren/worker/liveness.py``) and kill a frozen or hung worker."""
        live, warned_for = self._liveness, None
        while self.alive:
            await asyncio.sleep(self._heartbeat_interval)
            await asyncio.sleep(0)  # a Pong already in the socket buffer is read before any judgement
            if not self.alive or self.channel is None or self._stopping:
                return  # a worker being stopped is the stop escalation's to end
            now = time.monotonic()
            if not live.waiting:
                live.pinged(now)
                # No drain: a Ping is a few bytes, and this task must not wait behind a large frame
                # another request is writing to a worker that may be stopped.
                self.channel.send_nowait(p.Ping(id=next(self._ids)))
                continue
            sample = self._probe(self.pid) if self._probe is not None else self.worker.probe() if self.worker else None
            verdict = live.judge(now, sample)
            if verdict is Verdict.WAIT and warned_for != live.asked_at:
                warned_for = live.asked_at
                log.warning("worker slow to answer Ping; waiting (starved of CPU?) model=%s pid=%s state=%s "
                            "silent_s=%.1f", self.name, self.pid, sample.state if sample else "?",
                            live.silent_for(now))
            if verdict in (Verdict.FROZEN, Verdict.HUNG):
                await self.kill(live.explain(verdict, now, sample), kind=ExitKind(verdict.value))
                return

    def _tail_hint(self) -> str:
        last = [line for line in self.stderr_tail if line.strip()][-3:]
        return ("its last output: " + " | ".join(last)) if last else ""
