"""The environment a worker process starts with: the supervisor's, plus what makes a worker cheaper.

- ``OPENBLAS_NUM_THREADS=1``: ``llama_cpp`` imports numpy, whose OpenBLAS starts a thread per core at
  import and lets them spin for a while. The worker never calls BLAS (llama.cpp has its own threads),
  so those threads only took CPU from the warm spare's start and from the other worker's decode.

Tried and left out: ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (transparent huge pages for the KV
cache) made creating a context 2–3x faster most of the time, and 3–4x *slower* now and then on this
machine, a VM that hands freed 8 MiB blocks back to its host (``page_reporting_order=11``): huge pages
come from exactly those blocks. ``warren/worker/prefault.py`` gets the same gain on 4 KiB pages.

A variable the user set already is left alone: they may know their machine better.
"""

from __future__ import annotations

import os

WORKER_DEFAULTS = {
    "OPENBLAS_NUM_THREADS": "1",
}


def worker_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    for name, value in WORKER_DEFAULTS.items():
        env.setdefault(name, value)
    return env
