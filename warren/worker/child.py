"""The worker process: one model, served over the inherited channel until EOF.

Started by the local launcher (``warren/worker/local.py``) as ``python -m warren.worker.child --fd N
--parent PID``: a fresh interpreter (spawn semantics, never fork), so no supervisor state, thread or lock
is inherited. ``Worker`` itself does not depend on being alone in its process: the tests' in-process
launcher (``tests/fakes/inprocess.py``) runs it on threads, with a fake engine, over a real socketpair,
and gives it its own ``on_eof`` and ``log`` instead of ending the process and writing to stderr.

Threads:
- the **main thread** runs the engine (load, generate, park) one request at a time, because a
  llama.cpp context serves one sequence here;
- a **tokens thread** answers ``Tokenize`` and ``Detokenize`` beside a running generation, once the
  engine says it can (``concurrent_tokens``): llama.cpp's tokenizer only reads the vocabulary's tables
  and keeps its state per call (``llama_vocab::impl::tokenize`` is ``const``; llama.cpp's own server
  tokenizes on its HTTP threads while the main loop decodes), and ctypes releases the GIL in both. So a
  token count typed in KoboldAI Lite is answered in milliseconds, not after a minute-long generation.
  They are not answered on the reader thread: tokenizing a 16 MB text there would hold up Pongs and
  Cancels;
- a **reader thread** answers ``Ping`` at once (so liveness checks work mid-generation), flags
  ``Cancel`` for the running request, and queues everything else for the other two. On EOF —
  the supervisor closed the channel or died — it ends the process at once: no orphan keeps the
  model's memory.

The child also asks the kernel to SIGKILL it when the supervisor dies (``PR_SET_PDEATHSIG``), which
covers a supervisor killed with SIGKILL while this process is busy in native code.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, TextIO

from warren.embeddings import EmbedRequest
from warren.errors import InvalidRequest, WarrenError, WorkerLoadFailed
from warren.model_info import ModelInfo
from warren.params import GenerationParams, GenerationResult
from warren.settings import ModelSettings
from warren.worker import protocol as p
from warren.worker.engine_api import Engine
from warren.worker.prefault import Prefault

PR_SET_PDEATHSIG = 1  # linux/prctl.h
BATCH_INTERVAL = 0.25  # s between partial-text frames of a non-streamed generation
TOKEN_FRAMES = (p.Tokenize, p.Detokenize)  # answered on the tokens thread when the engine allows it


def _die_with_parent(parent_pid: int) -> None:
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(0)


class FrameSocket:
    """Blocking framed I/O on the channel; ``send`` is safe from both threads."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb", buffering=1 << 16)
        self.lock = threading.Lock()

    def send(self, frame: p.Frame) -> None:
        data = p.encode(frame)
        with self.lock:
            self.sock.sendall(data)

    def recv(self) -> p.Frame | None:
        header = self.file.read(p.HEADER.size)
        if len(header) < p.HEADER.size:
            return None
        length = p.frame_length(header)
        body = self.file.read(length)
        if len(body) < length:
            return None
        return p.decode(body)


def _exit_now() -> None:
    os._exit(0)


class Worker:
    def __init__(self, channel: FrameSocket, engine: Engine, *, on_eof: Callable[[], None] = _exit_now,
                 log: TextIO | None = None) -> None:
        """``on_eof``: what the end of the channel does (in a worker process: end it, at once); ``log``:
        where the worker's own messages go (stderr when None)."""
        self.channel = channel
        self.engine = engine
        self.on_eof = on_eof
        self.log = log
        self.inbox: queue.SimpleQueue[p.Frame | None] = queue.SimpleQueue()  # for the main thread
        self.tokens: queue.SimpleQueue[p.Frame | None] = queue.SimpleQueue()  # for the tokens thread
        self.cancelled: set[int] = set()
        self.cancel_lock = threading.Lock()

    # -- reader thread ------------------------------------------------------------------------------
    def read_loop(self) -> None:
        try:
            while True:
                frame = self.channel.recv()
                if frame is None:
                    break
                if isinstance(frame, p.Ping):
                    self.channel.send(p.Pong(id=frame.id))
                elif isinstance(frame, p.Cancel):
                    with self.cancel_lock:
                        self.cancelled.add(frame.id)
                    wake = getattr(self.engine, "wake", None)
                    if wake is not None:  # a generation paused for its turn of the cores sees it now
                        wake()
                elif isinstance(frame, p.SetThreads):  # recorded now, applied by the engine between decode steps
                    set_threads = getattr(self.engine, "set_threads", None)
                    if set_threads is not None:
                        set_threads(frame.threads, frame.cores)
                elif isinstance(frame, TOKEN_FRAMES) and getattr(self.engine, "concurrent_tokens", False):
                    self.tokens.put(frame)
                else:
                    self.inbox.put(frame)  # before the model is loaded, token frames wait for the Load
        except (OSError, p.ProtocolError) as exc:
            print(f"warren worker: channel broken: {exc}", file=self.log or sys.stderr, flush=True)
        self.on_eof()  # EOF: the supervisor is gone or done with us

    def is_cancelled(self, request_id: int) -> Callable[[], bool]:
        return lambda: request_id in self.cancelled

    # -- main and tokens threads ----------------------------------------------------------------------
    def serve(self, inbox: queue.SimpleQueue[p.Frame | None]) -> None:
        """Answer the frames of ``inbox`` in order, each with its answer or a ``Failed`` frame, until a
        ``None`` (in a worker process the reader thread ends the process on EOF instead). An engine that
        serves several requests at once (``--parallelrequests``) takes its generations in a batch."""
        while (frame := inbox.get()) is not None:
            if isinstance(frame, p.Generate) and getattr(self.engine, "parallel", 1) > 1:
                if not self.serve_batched(frame, inbox):
                    return
                continue
            self.answer(frame)

    def serve_batched(self, first: p.Generate, inbox: queue.SimpleQueue[p.Frame | None]) -> bool:
        """Step the engine's sequences (``warren/worker/batching.py``) until none is left, taking the
        generations that arrive meanwhile into free sequences. Other frames (none come while requests run:
        the pool parks and loads idle workers only) wait until the batch is done. False at the end (None)."""
        runner = self.engine.batch_runner()
        later: list[p.Frame] = []
        self.admit(runner, first)
        while True:
            while True:
                try:
                    frame = inbox.get_nowait()
                except queue.Empty:
                    break
                if frame is None:
                    runner.close()
                    return False
                if isinstance(frame, p.Generate) and runner.free:
                    self.admit(runner, frame)
                else:
                    later.append(frame)
            if runner.active:
                try:
                    runner.step()
                except Exception as exc:  # a bug must fail the batch's requests, not the model
                    traceback.print_exc(file=self.log or sys.stderr)
                    runner.fail_all(WarrenError(f"internal error in the worker ({type(exc).__name__}); see the "
                                                "server log"))
                continue
            if not later:
                return True
            frame = later.pop(0)
            if isinstance(frame, p.Generate):
                self.admit(runner, frame)
            else:
                self.answer(frame)

    def admit(self, runner: Any, frame: p.Generate) -> None:
        """Start one generation among the batch's; its ``Done`` (or ``Failed``) is sent when it ends."""
        request_id = frame.id

        def finish(outcome: GenerationResult | WarrenError) -> None:
            with self.cancel_lock:
                self.cancelled.discard(request_id)
            if isinstance(outcome, WarrenError):
                self.channel.send(p.Failed(id=request_id, error=outcome.to_wire()))
            else:
                self.channel.send(_done(request_id, outcome))

        try:
            params = GenerationParams.from_wire(frame.params)
            emit = self.streamer(request_id) if frame.stream else self.batcher(request_id)
            runner.admit(request_id, params, emit, self.is_cancelled(request_id), finish)
        except WarrenError as exc:
            finish(exc)
        except Exception as exc:  # a bug must fail one request, not the model
            traceback.print_exc(file=self.log or sys.stderr)
            finish(WarrenError(f"internal error in the worker ({type(exc).__name__}); see the server log"))

    def answer(self, frame: p.Frame) -> None:
        """One frame, answered: its answer, or a ``Failed`` frame."""
        try:
            self.channel.send(self.handle(frame))
        except WarrenError as exc:
            self.channel.send(p.Failed(id=frame.id, error=exc.to_wire()))
        except Exception as exc:  # a bug here must fail one request, not the model: log it, answer, go on
            traceback.print_exc(file=self.log or sys.stderr)
            error = WarrenError(f"internal error in the worker ({type(exc).__name__}); see the server log")
            self.channel.send(p.Failed(id=frame.id, error=error.to_wire()))
        finally:
            with self.cancel_lock:
                self.cancelled.discard(frame.id)

    def handle(self, frame: p.Frame) -> p.Frame:
        if isinstance(frame, p.Load):
            return self.load(frame)
        if isinstance(frame, p.Generate):
            params = GenerationParams.from_wire(frame.params)
            emit = self.streamer(frame.id) if frame.stream else self.batcher(frame.id)
            return _done(frame.id, self.engine.generate(params, emit, self.is_cancelled(frame.id)))
        if isinstance(frame, p.Park):
            park = getattr(self.engine, "park", None)
            if park is None:
                raise InvalidRequest("this worker's engine cannot park")
            kept = park(frame.keep_state_bytes, frame.keep_context)
            return p.Result(id=frame.id, value={"state_bytes": int(kept or 0),
                                                "context": bool(getattr(self.engine, "parked_context", False))})
        if isinstance(frame, p.DropState):
            drop = getattr(self.engine, "drop_state", None)
            if drop is not None:
                drop()
            return p.Result(id=frame.id, value=None)
        if isinstance(frame, p.Embed):
            return self.embed(frame)
        if isinstance(frame, p.SaveState):
            save = getattr(self.engine, "save_state", None)
            return p.Result(id=frame.id, value={"bytes": int(save() or 0) if save is not None else 0})
        if isinstance(frame, p.Tokenize):
            return p.Result(id=frame.id, value=self.engine.tokenize(frame.text, frame.special))
        if isinstance(frame, p.Detokenize):
            return p.Result(id=frame.id, value=self.engine.detokenize(frame.ids))
        raise InvalidRequest(f"the worker does not handle {frame.type_name} frames")

    def embed(self, frame: p.Embed) -> p.Frame:
        """On the main thread, like a generation: the embeddings context decodes on the cores the pool gave."""
        embed = getattr(self.engine, "embed", None)
        if embed is None:
            raise InvalidRequest("this worker's engine cannot make embeddings")
        r = embed(EmbedRequest.from_wire(frame.request), self.is_cancelled(frame.id))
        return p.Embeddings(id=frame.id, vectors=r.data, dim=r.dim, tokens=list(r.tokens), seconds=r.seconds)

    def streamer(self, request_id: int) -> Callable[[str], None]:
        send, token = self.channel.send, p.Token
        return lambda text: send(token(id=request_id, text=text))

    def batcher(self, request_id: int) -> Callable[[str], None]:
        """For non-streamed requests: partial text a few times a second (KoboldCpp's generate/check
        polls it), instead of one frame per token."""
        pending: list[str] = []
        last = [time.monotonic()]

        def emit(text: str) -> None:
            pending.append(text)
            now = time.monotonic()
            if now - last[0] >= BATCH_INTERVAL:
                last[0] = now
                self.channel.send(p.Token(id=request_id, text="".join(pending)))
                pending.clear()

        return emit

    def load(self, frame: p.Load) -> p.Frame:
        settings = ModelSettings.from_wire(frame.settings)
        started = time.perf_counter()
        last = [-1.0]

        def progress(fraction: float) -> None:
            if fraction - last[0] >= 0.1 or fraction >= 1.0:  # a handful of frames, not thousands
                last[0] = fraction
                self.channel.send(p.Progress(id=frame.id, fraction=round(fraction, 3)))

        set_disk_tier = getattr(self.engine, "set_disk_tier", None)
        if set_disk_tier is not None:
            set_disk_tier(frame.kvcache_dir, frame.kvcache_bytes)
        try:
            info = self.engine.load(settings, progress, Prefault(frame.prefault_bytes, frame.prefault_after))
        except WarrenError:
            raise
        except Exception as exc:  # a native loader failure surfaces as a Python exception here
            raise WorkerLoadFailed(f"model {settings.name!r} failed to load: {exc}") from exc
        wire = info.as_wire() if isinstance(info, ModelInfo) else dict(info)  # (test engines may report dicts)
        return p.Ready(id=frame.id, model=wire, load_seconds=time.perf_counter() - started)


def _done(request_id: int, r: GenerationResult) -> p.Done:
    return p.Done(id=request_id, text=r.text, finish_reason=r.finish_reason.value, prompt_tokens=r.prompt_tokens,
                  completion_tokens=r.completion_tokens, prompt_seconds=r.prompt_seconds,
                  generation_seconds=r.generation_seconds, seed=r.seed, cached_tokens=r.cached_tokens,
                  logprobs=[e.as_wire() for e in r.logprobs])


def load_engine(spec: str) -> Engine:
    """``llama`` for the real engine, or ``module:factory`` (tests' fake engines)."""
    if spec == "llama":
        spec = "warren.worker.engine:LlamaEngine"
    module_name, _, factory = spec.partition(":")
    factory_fn: Callable[[], Any] = getattr(importlib.import_module(module_name), factory)
    return factory_fn()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="warren-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--parent", type=int, required=True)
    parser.add_argument("--engine", default="llama")
    args = parser.parse_args(argv)
    _die_with_parent(args.parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the terminal is the supervisor's to handle
    channel = FrameSocket(socket.socket(fileno=args.fd))
    engine = load_engine(args.engine)
    worker = Worker(channel, engine)
    channel.send(p.Hello(pid=os.getpid(), engine=args.engine))
    threading.Thread(target=worker.serve, args=(worker.tokens,), name="warren-tokens", daemon=True).start()
    threading.Thread(target=worker.read_loop, name="warren-reader", daemon=True).start()
    worker.serve(worker.inbox)
    os._exit(0)


if __name__ == "__main__":
    main()
