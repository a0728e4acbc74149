"""The supervisor's side of one worker process: spawn, handshake, requests, liveness, stop, reap.

A ``WorkerHandle`` owns exactly one child process and everything attached to it: the channel, the
task that reads frames, the task that keeps the child's stderr in a bounded ring, and the heartbeat.
All of them are stored on the handle and ended by ``stop()``; none is left unowned.

Contracts:
- ``start()`` returns once the child said ``Hello`` (interpreter up, engine library imported).
- ``load()`` returns the model description only after ``Ready``; progress is logged and kept in
  ``progress``.
- When the process ends, every request still waiting gets an error: ``WorkerClosed`` if we stopped it,
  ``WorkerCrashed`` naming the model and the signal or exit status otherwise. The last lines of its
  stderr go to the log. A crash (``exit_kind`` "crashed") while a generation was running leaves that
  generation's parameters in ``crashed_during``, so the pool can charge the crash to the request.
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
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from warren.errors import (
    Busy,
    InvalidRequest,
    WarrenError,
    WorkerClosed,
    WorkerCrashed,
    WorkerLoadFailed,
    describe_exit,
    unrunnable_cause,
)
from warren.model_info import ModelInfo
from warren.params import GenerationParams
from warren.settings import ModelSettings
from warren.worker import protocol as p
from warren.worker.environment import worker_environment
from warren.worker.liveness import Liveness, LivenessRule, ProcessProbe, Verdict, read_proc_stat

log = logging.getLogger(__name__)

STDERR_LINES = 200  # enough for llama.cpp's load log and a crash's last words, small enough to keep per model
HELLO_TIMEOUT = 60.0  # interpreter start + importing llama_cpp; seconds on a loaded machine
LOAD_TIMEOUT = 600.0  # a large model from a slow disk
# The reader thread answers pings even mid-decode, so a Ping a second costs nothing and bounds how long a
# stopped worker holds its queue: asked at the next beat, judged frozen FROZEN_AFTER (1.5 s) later.
HEARTBEAT_INTERVAL = 1.0
CALL_TIMEOUT = 60.0  # Tokenize/Detokenize/Park: past this the request fails (Busy); the worker is left alone
STOP_GRACE = 3.0  # after EOF a healthy worker exits in milliseconds; a busy one gets this long


class WorkerHandle:
    def __init__(self, settings: ModelSettings, *, heartbeat: bool = True, load_timeout: float = LOAD_TIMEOUT,
                 heartbeat_interval: float = HEARTBEAT_INTERVAL, liveness: LivenessRule | None = None,
                 probe: ProcessProbe = read_proc_stat) -> None:
        """``liveness``: the heartbeat's thresholds; ``probe`` reads the worker process's state for the
        verdict (``warren/worker/liveness.py``); another launcher passes its own."""
        self.settings = settings
        self.name = settings.name
        self.process: asyncio.subprocess.Process | None = None
        self.pid = 0
        self.progress = 0.0
        self.model_info: ModelInfo | None = None
        self.load_seconds = 0.0
        self.started_at = 0.0
        self.stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._writer: asyncio.StreamWriter | None = None
        self._pending: dict[int, asyncio.Queue[p.Frame | WarrenError]] = {}
        self._ids = itertools.count(1)
        self._hello: asyncio.Future[p.Hello] | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = False
        self._kill_reason = ""
        self._kill_kind = ""
        self._heartbeat = heartbeat
        self._beating: asyncio.Task[None] | None = None
        self._load_timeout = load_timeout
        self._heartbeat_interval = heartbeat_interval
        self._liveness = Liveness(liveness)
        self._probe = probe
        self.exit_error: WarrenError | None = None
        self.on_progress: Callable[[], None] | None = None
        self.exit_kind = ""  # requested | crashed | oom_suspected | hung | frozen | unrunnable, once ended
        self.exited = asyncio.Event()
        self._generating: dict[int, GenerationParams] = {}  # Generate requests the worker has not ended
        self.crashed_during: GenerationParams | None = None  # the generation running when it crashed

    # -- lifecycle ------------------------------------------------------------------------------------
    async def start(self) -> None:
        parent_sock, child_sock = socket.socketpair()
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "warren.worker.child", "--fd", str(child_sock.fileno()),
                "--parent", str(os.getpid()), "--engine", self.settings.engine,
                pass_fds=(child_sock.fileno(),), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops workers in order
                env=worker_environment(),
            )
        finally:
            child_sock.close()
        self.pid = self.process.pid
        self.started_at = time.monotonic()
        reader, self._writer = await asyncio.open_unix_connection(sock=parent_sock, limit=p.MAX_FRAME + 16)
        self._hello = asyncio.get_running_loop().create_future()
        self._tasks.append(asyncio.create_task(self._read_frames(reader), name=f"frames-{self.name}"))
        self._tasks.append(asyncio.create_task(self._read_stderr(), name=f"stderr-{self.name}"))
        log.debug("worker spawned model=%s pid=%s", self.name, self.pid)
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
        frame = await self._request(p.Load(id=next(self._ids), settings=self.settings.as_wire(),
                                           prefault_bytes=prefault_bytes, prefault_after=list(prefault_after)),
                                   self._load_timeout, kill_on_timeout=True)
        assert isinstance(frame, p.Ready)
        self.model_info = ModelInfo.from_wire(frame.model)
        self.load_seconds = frame.load_seconds
        self.progress = 1.0
        if self._heartbeat and self._beating is None:  # once per worker: a resumed (parked) one beats already
            self._beating = asyncio.create_task(self._beat(), name=f"heartbeat-{self.name}")
            self._tasks.append(self._beating)
        return self.model_info

    async def park(self) -> None:
        """Ask the worker to free its context and weights' pages, keeping the model (``Park``)."""
        await self._request(p.Park(id=next(self._ids)), CALL_TIMEOUT)

    async def kill(self, reason: str, kind: str = "hung") -> None:
        """End a misbehaving worker now; waiters get ``WorkerCrashed`` with ``reason``; ``kind`` becomes
        its ``exit_kind`` (hung, frozen). SIGKILL ends a stopped process too."""
        log.error("killing worker model=%s pid=%s kind=%s reason=%s", self.name, self.pid, kind, reason)
        self._kill_reason, self._kill_kind = reason, kind
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.exited.wait()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None and not self.exited.is_set()

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
        if self._writer is not None:
            self._writer.close()
        proc = self.process
        if proc is not None and proc.returncode is None:
            for sig in (None, "terminate", "kill"):
                if sig is not None:
                    log.info("worker did not exit; sending SIG%s model=%s pid=%s", sig[:4].upper(), self.name,
                             self.pid)
                    with contextlib.suppress(ProcessLookupError):
                        getattr(proc, sig)()
                try:
                    await asyncio.wait_for(proc.wait(), grace)
                    break
                except TimeoutError:
                    continue
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.exited.wait(), grace)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

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
        if self._writer is None or self.exit_error is not None:
            raise self.exit_error or WorkerClosed(f"the worker for model {self.name!r} is not running")
        try:
            data = p.encode(frame)
        except p.Unencodable as exc:
            raise InvalidRequest(f"the request cannot be passed to the worker: {exc}",
                                 hint="text must be valid Unicode (no lone surrogates), numbers in range") from None
        try:
            self._writer.write(data)
            await self._writer.drain()
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
    async def _read_frames(self, reader: asyncio.StreamReader) -> None:
        reason = ""
        try:
            while True:
                header = await reader.readexactly(p.HEADER.size)
                frame = p.decode(await reader.readexactly(p.frame_length(header)))
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
        except asyncio.IncompleteReadError:
            pass  # EOF: the process ended or closed its end
        except p.ProtocolError as exc:
            reason = f"it sent an invalid frame ({exc})"
            log.error("worker sent garbage; killing it model=%s pid=%s error=%s", self.name, self.pid, exc)
            if self.process and self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
        except (ConnectionError, OSError):
            pass
        await self._on_exit(reason)

    async def _on_exit(self, reason: str) -> None:
        proc = self.process
        returncode = None
        if proc is not None:
            try:
                returncode = await asyncio.wait_for(proc.wait(), 2.0 if not self._stopping else STOP_GRACE * 3)
            except TimeoutError:  # channel closed but the process lingers: make sure it is gone
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                returncode = await proc.wait()
        await asyncio.sleep(0)  # let the stderr task take the last lines
        if self._stopping:
            self.exit_kind = "requested"
            self.exit_error = WorkerClosed(f"model {self.name!r} was unloaded", model=self.name)
        else:
            how = reason or self._kill_reason or describe_exit(returncode)
            if reason or self._kill_reason:
                self.exit_kind = self._kill_kind if self._kill_reason and not reason else "crashed"
            elif cause := unrunnable_cause(returncode):
                self.exit_kind = "unrunnable"  # no request provokes SIGILL/SIGBUS: the engine cannot run here
                how += f": {cause}"
            elif returncode == -signal.SIGKILL:
                self.exit_kind = "oom_suspected"  # nobody here sent it: the kernel's OOM killer is the usual sender
                how += " (not sent by warren: out of memory?)"
            else:
                self.exit_kind = "crashed"
            if self.exit_kind == "crashed" and self._generating:
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

    async def _read_stderr(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        debug = log.isEnabledFor(logging.DEBUG)
        while line := await self.process.stdout.readline():
            text = line.decode("utf-8", "replace").rstrip()
            self.stderr_tail.append(text)
            if debug:
                log.debug("worker model=%s: %s", self.name, text)

    async def _beat(self) -> None:
        """Each interval: ask (a Ping) when the last one was answered, else judge the silence from the
        process's state (``warren/worker/liveness.py``) and kill a frozen or hung worker."""
        live, warned_for = self._liveness, None
        while self.alive:
            await asyncio.sleep(self._heartbeat_interval)
            await asyncio.sleep(0)  # a Pong already in the socket buffer is read before any judgement
            if not self.alive or self._writer is None or self._stopping:
                return  # a worker being stopped is the stop escalation's to end
            now = time.monotonic()
            if not live.waiting:
                live.pinged(now)
                # No drain: a Ping is a few bytes, and this task must not wait behind a large frame
                # another request is writing to a worker that may be stopped.
                self._writer.write(p.encode(p.Ping(id=next(self._ids))))
                continue
            sample = self._probe(self.pid)
            verdict = live.judge(now, sample)
            if verdict is Verdict.WAIT and warned_for != live.asked_at:
                warned_for = live.asked_at
                log.warning("worker slow to answer Ping; waiting (starved of CPU?) model=%s pid=%s state=%s "
                            "silent_s=%.1f", self.name, self.pid, sample.state if sample else "?",
                            live.silent_for(now))
            if verdict in (Verdict.FROZEN, Verdict.HUNG):
                await self.kill(live.explain(verdict, now, sample), kind=verdict.value)
                return

    def _tail_hint(self) -> str:
        last = [line for line in self.stderr_tail if line.strip()][-3:]
        return ("its last output: " + " | ".join(last)) if last else ""
