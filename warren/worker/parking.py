"""Shrinking a loaded worker to what a quick return needs: parking's memory side.

A parked worker keeps its ``llama_model`` (tokenizer tables, tensor metadata: the ~90 ms of a load
that is pure CPU) and gives back everything large: the context is freed by the engine (unless the pool
has room for it: then it is kept whole, and counted, for an instant resume; ``engine.park``), the heap's
free memory goes back to the system (``malloc_trim``), and the pages of the memory-mapped model file
are unmapped from the process (``madvise(MADV_DONTNEED)``) — they stay in the page cache, so mapping
them again on the first decode after resuming is cheap (~6 ms for the default model here), and they
no longer count in this process's footprint. Measured for the default model: 196 MiB PSS loaded at a
2048-token context, 54 MiB parked, and no growth over 100 park/resume cycles (``docs/benchmarks.md``).

Only possible when the weights are a file mapping (``--usemmap`` without ``--usemlock``): weights read
into anonymous memory are the only copy, so such instances are stopped, never parked.
"""

from __future__ import annotations

import ctypes
import os
import sys
from pathlib import Path

MADV_DONTNEED = 4  # linux/mman.h


def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    return libc


def file_mappings(path: Path, maps: str = "/proc/self/maps") -> list[tuple[int, int]]:
    """(start, end) of every mapping of ``path`` in this process."""
    target = os.path.realpath(path)
    spans = []
    with open(maps) as f:
        for line in f:
            fields = line.split(maxsplit=5)
            if len(fields) == 6 and fields[5].rstrip("\n") == target:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                spans.append((start, end))
    return spans


def drop_file_pages(path: Path) -> int:
    """Unmap the pages of ``path``'s mappings from this process (the mappings stay valid: a later
    access maps the page again from the page cache). Returns the bytes of mapping dropped."""
    libc = _libc()
    if libc is None:
        return 0
    dropped = 0
    for start, end in file_mappings(path):
        if libc.madvise(start, end - start, MADV_DONTNEED) == 0:
            dropped += end - start
    return dropped


def trim_heap() -> None:
    """Give the heap's free memory back to the system (glibc only)."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim(0)


def anonymous_resident(status: str = "/proc/self/status") -> int:
    """This process's anonymous resident bytes (heap and private mappings: a context's KV cache and compute
    buffers, not the model file's pages); 0 where the kernel does not say."""
    try:
        with open(status) as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
