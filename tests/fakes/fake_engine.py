"""Fake engines for faults a real model cannot produce on demand.

A worker loads one with ``ModelSettings(engine="tests.fakes.fake_engine:<factory>")``. The engine
produces tokens "t0 t1 t2 …" quickly and, depending on the factory, misbehaves: crashes with a real
signal mid-stream, fails or hangs in load, or writes garbage on the channel.

Its faults go through ``engine.faults``: in a worker process (the local launcher) ``ProcessFaults``,
real signals and real instructions; on the in-process launcher (``tests/fakes/inprocess.py``) its own,
which end the in-process worker the same way as seen from the supervisor, without a signal.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import platform
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from warren.errors import WorkerLoadFailed
from warren.params import FinishReason, GenerationParams, GenerationResult
from warren.settings import ModelSettings

CHANNEL_FD_ENV = "WARREN_FAKE_CHANNEL_FD"


class ProcessFaults:
    """Faults of an engine in a worker process of its own: real signals, a real illegal instruction."""

    def signal(self, sig: int) -> None:
        os.kill(os.getpid(), sig)
        time.sleep(5)

    def illegal_instruction(self) -> None:
        execute_illegal_instruction()

    def block(self) -> None:
        time.sleep(3600)

    def garbage(self) -> None:
        """Write bytes that are not a frame onto the channel (its fd is found via /proc)."""
        for fd in range(3, 64):
            try:
                if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                    os.write(fd, b"\x00\x00\x00\x05garbage!")
                    break
            except OSError:
                continue
        time.sleep(5)

    def reached(self, mark: str) -> None:
        pass  # only the in-process launcher lets a test wait for it

    def gate(self, name: str) -> None:
        pass  # only the in-process launcher can hold a worker here


class FakeEngine:
    """Emits ``max_tokens`` tokens named t0, t1, …; ``on_token(i)`` is the hook faults use."""

    faults: Any = ProcessFaults()  # replaced by the in-process launcher
    token_delay = 0.0
    concurrent_tokens = True  # tokenize/detokenize are pure Python here: safe beside generate
    loads = 0  # in this process: a resumed (parked) model is loaded again by the same worker
    parks = 0

    def load(self, settings: ModelSettings, progress: Callable[[float], None], prefault: Any = None
             ) -> dict[str, Any]:
        for step in range(5):
            progress(step / 4)
        self.loads += 1
        return {"n_ctx": settings.context_size, "n_ctx_train": 4096, "n_vocab": 100, "chat_template": None,
                "bos_token": "<s>", "eos_token": "</s>", "add_bos": False, "loads": self.loads, "parks": self.parks,
                # what the supervisor asked to pre-fault, so pool tests can see it
                "prefault_bytes": prefault.nbytes if prefault else 0,
                "prefault_after": list(prefault.after) if prefault else []}

    def on_token(self, index: int) -> None:
        pass

    def park(self, keep_state_bytes: int = -1, keep_context: bool = False) -> int:
        self.parks += 1
        return 0

    def generate(self, params: GenerationParams, emit: Callable[[str], None] | None,
                 cancelled: Callable[[], bool]) -> GenerationResult:
        text = []
        reason = FinishReason.LENGTH
        for i in range(params.max_tokens):
            if cancelled():
                reason = FinishReason.ABORT
                break
            self.on_token(i)
            piece = f" t{i}"
            text.append(piece)
            if emit:
                emit(piece)
            if self.token_delay:
                time.sleep(self.token_delay)
        return GenerationResult("".join(text), reason, 3, len(text), 0.001, 0.001, 0)

    def tokenize(self, text: str, special: bool) -> list[int]:
        return [len(w) for w in text.split()]

    def detokenize(self, ids: list[int]) -> str:
        return " ".join("x" * i for i in ids)


class SlowEngine(FakeEngine):
    token_delay = 0.02


class LongEngine(FakeEngine):
    """A long generation, like the real model's: 4,000 tokens take ~20 s. The delay is a sleep, which
    releases the GIL as llama.cpp's decode does through ctypes."""

    token_delay = 0.005


class SlowTokenizeEngine(FakeEngine):
    """Tokenizes ``slow`` for 3 s: a request the supervisor stops waiting for, from a healthy worker."""

    def tokenize(self, text: str, special: bool) -> list[int]:
        if text == "slow":
            time.sleep(3)
        return super().tokenize(text, special)


class GatedEngine(FakeEngine):
    """Passes the gate "token-1" at its second token: on the in-process launcher a test may hold it there
    (``worker.hold("token-1")``, then ``worker.open``), to have a generation that is certainly running."""

    def on_token(self, index: int) -> None:
        if index == 1:
            self.faults.gate("token-1")


class CrashEngine(FakeEngine):
    """Dies by a real signal at token 3: SIGSEGV unless the model name says otherwise."""

    signal_name = "SIGSEGV"

    def on_token(self, index: int) -> None:
        if index == 3:
            self.faults.signal(getattr(signal, self.signal_name))


class AbortEngine(CrashEngine):
    signal_name = "SIGABRT"


class CrashOnMarkerEngine(FakeEngine):
    """Aborts (SIGABRT, as llama.cpp on a bad grammar) when the prompt or the grammar says CRASH: a
    crash that one request causes and others do not."""

    def generate(self, params: GenerationParams, emit: Callable[[str], None] | None,
                 cancelled: Callable[[], bool]) -> GenerationResult:
        if "CRASH" in params.prompt or "CRASH" in params.grammar:
            self.faults.signal(signal.SIGABRT)
        return super().generate(params, emit, cancelled)


class CrashAfterReadyEngine(FakeEngine):
    """Dies of SIGSEGV 50 ms after its load, while idle: a model that fails without any request."""

    def load(self, settings: ModelSettings, progress: Callable[[float], None], prefault: Any = None
             ) -> dict[str, Any]:
        def crash() -> None:
            time.sleep(0.05)
            self.faults.signal(signal.SIGSEGV)

        threading.Thread(target=crash, daemon=True).start()
        return super().load(settings, progress, prefault)


class FailLoadEngine(FakeEngine):
    def load(self, settings: ModelSettings, progress: Callable[[float], None], prefault: Any = None
             ) -> dict[str, Any]:
        raise WorkerLoadFailed(f"fake engine refuses to load {settings.name}")


class HangLoadEngine(FakeEngine):
    def load(self, settings: ModelSettings, progress: Callable[[float], None], prefault: Any = None
             ) -> dict[str, Any]:
        self.faults.reached("load")
        self.faults.block()
        return {}


class GarbageEngine(FakeEngine):
    """Writes bytes that are not a frame onto the channel at token 2."""

    def on_token(self, index: int) -> None:
        if index == 2:
            self.faults.garbage()


class WedgedEngine(FakeEngine):
    """Stuck in native code holding the GIL at token 2, deaf to SIGTERM: EOF, pings and TERM all go
    unanswered, so only SIGKILL ends it (a PyDLL call keeps the GIL, unlike ctypes.CDLL)."""

    def on_token(self, index: int) -> None:
        if index == 2:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            ctypes.PyDLL(None).sleep(3600)


def execute_illegal_instruction() -> None:
    """Run an instruction no CPU has (x86 ``ud2``, arm64 ``udf``): a real SIGILL from a real instruction,
    as an engine built for another CPU gives."""
    code = b"\x00\x00\x00\x00" if platform.machine() in ("aarch64", "arm64") else b"\x0f\x0b"
    page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    page.write(code)
    ctypes.CFUNCTYPE(None)(ctypes.addressof(ctypes.c_char.from_buffer(page)))()


class IllegalInstructionEngine(FakeEngine):
    """Loads, then dies of SIGILL at its first decode: an engine built for a CPU this one is not."""

    def build_info(self) -> dict[str, Any]:
        return {"version": "fake", "system_info": "CPU : AVX2 = 1 | AMX_INT8 = 1 |", "gpu_offload": False}

    def generate(self, params: GenerationParams, emit: Callable[[str], None] | None,
                 cancelled: Callable[[], bool]) -> GenerationResult:
        self.faults.illegal_instruction()
        raise AssertionError("unreachable: the instruction above ends the process")


# Engine specs name these by short name: "tests.fakes.fake_engine:<name>" (a class is its own factory).
fake, slow, crash_segv, crash_abort = FakeEngine, SlowEngine, CrashEngine, AbortEngine
long, slow_tokenize, gated = LongEngine, SlowTokenizeEngine, GatedEngine
crash_on_marker, crash_after_ready = CrashOnMarkerEngine, CrashAfterReadyEngine
fail_load, hang_load, garbage, wedged = FailLoadEngine, HangLoadEngine, GarbageEngine, WedgedEngine
illegal_instruction = IllegalInstructionEngine
