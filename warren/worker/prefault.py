"""Fault in the KV cache's memory on the second core while the model loads on the first.

Why: creating a llama.cpp context allocates the KV cache and clears it at once. For the default model
at a 2048-token context that is 45 MiB of fresh memory, ~11,500 page faults, which took ~33 ms of the
~140 ms a swap spent loading — on one core, after the model load, while the other core idled. The
model load itself (~90 ms, mostly building the tokenizer's tables) is single-threaded.

How: before the model load, ``Prefault`` takes a block the size of the coming KV cache from glibc's
heap and a thread writes it page by page. After the model load the block is stopped and freed, and
the KV cache allocation, made next, gets that free block back, already resident: the context is
created in ~6 ms instead of ~33 (``docs/benchmarks.md``). Whatever the context did not take is handed
back to the system (``malloc_trim``).

Two glibc settings make the block reusable, and are put back afterwards:

- ``M_MMAP_MAX = 0`` while loading: a block this large is otherwise a private ``mmap`` that ``free``
  unmaps at once, and so is the KV cache's own allocation; from the heap, the freed block is reused.
- A large ``M_TRIM_THRESHOLD`` while loading, so ``free`` does not give the block back before the
  context takes it.

"Put back" to glibc's default values: setting them also turns off glibc's self-tuning of the mmap
threshold for the rest of the process. Traced with strace over a 100-token generation: one
``mmap``/``munmap`` pair per request (the sampler's candidate array, 576 KiB) where there were none, and
none per token; tokens/s unchanged in ``benchmarks/bench_generation.py``.

Writing with ``memset`` beat ``madvise(MADV_POPULATE_WRITE)``: the latter holds the address-space
lock for each range, and the model load, which grows the heap all along, waited on it (+14 ms).
The writing thread only touches memory (no allocation, so no other arena is involved) and stops
when asked, so a context much larger than the model (long contexts, small models) costs at most the
memory it had faulted in by then, never a wait. Where this is not glibc on Linux it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import sys
import threading
import time
from collections.abc import Sequence

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # malloc.h
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536  # glibc's defaults
SLACK = 2 * 1024 * 1024
CHUNK = 4 * 1024 * 1024  # bytes written per step: the thread checks for "stop" this often (~3 ms)
EXIT_WAIT = 0.5  # seconds the thread waits at most for the workers this load replaces to end


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)
    if not all(hasattr(libc, name) for name in ("mallopt", "malloc_trim", "malloc", "free")):
        return None  # not glibc (musl has no mallopt)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    return libc


class Prefault:
    """``start()`` before the model load, ``release()`` right before the context is created, and
    ``finish()`` after it (also after a failed load: it restores glibc's settings)."""

    def __init__(self, nbytes: int, after: Sequence[int] = ()) -> None:
        # Room for what llama.cpp adds to the cache's own size (tensor alignment, the allocator's
        # header): a block even slightly smaller than the allocation is not reused at all.
        self.nbytes = nbytes + max(SLACK, nbytes // 32) if nbytes > 0 else 0
        self.touched = 0
        self.after = tuple(after)
        self._libc = _libc() if self.nbytes else None
        self._block: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        libc = self._libc
        if libc is None:
            return
        libc.mallopt(M_MMAP_MAX, 0)
        libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
        self._block = libc.malloc(self.nbytes)
        if not self._block:
            self._restore()
            return
        self._thread = threading.Thread(target=self._touch, name="warren-prefault", daemon=True)
        self._thread.start()

    def _touch(self) -> None:
        assert self._block is not None
        self._wait_for_exits()
        for offset in range(0, self.nbytes, CHUNK):
            if self._stop.is_set():
                return
            size = min(CHUNK, self.nbytes - offset)
            ctypes.memset(self._block + offset, 0, size)  # a foreign call: the GIL is released meanwhile
            self.touched = offset + size

    def _wait_for_exits(self) -> None:
        """Start after the workers this load replaces (``after``: their pids) have ended. Their memory
        is then free, so the new cache never sits on top of it, and their teardown — ~15 ms of
        unmapping on this machine — no longer competes with this thread for the second core: swaps
        measured ~10 ms faster than with both at once."""
        fds = []
        for pid in self.after:
            with contextlib.suppress(OSError):  # already gone (or no pidfd on this kernel): nothing to wait for
                fds.append(os.pidfd_open(pid))
        try:
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)  # a pidfd reads as ready once its process has ended
            waiting, deadline = len(fds), time.monotonic() + EXIT_WAIT
            while waiting and not self._stop.is_set() and time.monotonic() < deadline:
                for fd, _ in poller.poll(5):
                    poller.unregister(fd)
                    waiting -= 1
        finally:
            for fd in fds:
                os.close(fd)

    def release(self) -> None:
        """Stop writing and free the block, so the next large allocation (the KV cache) reuses it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._block is not None and self._libc is not None:
            self._libc.free(self._block)
            self._block = None

    def finish(self) -> None:
        """Back to glibc's usual behaviour, and give back what the context did not take."""
        self.release()
        if self._libc is not None:
            self._restore()
            self._libc.malloc_trim(0)

    def _restore(self) -> None:
        assert self._libc is not None
        self._libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        self._libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
