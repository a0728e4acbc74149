"""Flash attention on or off: decided by measurement, per model and machine, and remembered.

Why: which is faster depends on the CPU and the model, not on a rule. On this workplace's Intel Xeon
machines flash attention made the default model's decode 2.8x slower at 2,000 tokens of context (46.8 vs
16.9 tokens/s with ``llama-bench -fa 0,1``); on its AMD EPYC machines it is about 8% faster at depth 0
and about 7% slower at 2,000 (``docs/benchmarks.md``), and for Gemma 3 270M about even. llama.cpp's "auto"
turns it on wherever the backend supports it; KoboldCpp leaves it off. warren measures instead:

- ``--flashattention`` forces it on, ``--noflashattention`` forces it off (settings ``"on"``/``"off"``).
- Otherwise (``"auto"``), on a CPU the worker measures decode speed at ``PROBE_DEPTH`` tokens of context
  with both (``warren/worker/flash_probe.py``) the first time it loads a model on a machine, and keeps
  flash attention on unless it is clearly slower (``choose``). The result is kept in
  ``~/.cache/warren/flash-attention.json`` (``WARREN_CACHE_DIR`` moves it) under the model file, the CPU,
  the engine and the thread count, so later loads decide at once. A model offloaded to a GPU is left to
  llama.cpp ("auto": on where the GPU backend supports it).
- With ``--parallelrequests`` above 1 the same rule holds, though a batched worker reading a newcomer's
  prompt in small chunks deep in the context is where CPU flash attention is slowest (an 8-token chunk at
  depth 2,000 beside three streams: 100-117 ms with it, 60-70 ms without, ``docs/benchmarks.md``). Off,
  each sequence's attention is computed over the whole shared cache with the others' cells masked, and the
  sums come out in a different order than for the same request alone: greedy text of a request served
  among others then differs from the same request served alone after a few dozen tokens. With it on, a
  sequence's attention visits only its own cells, in the same order: the same text. Correct output first.

This module is the stdlib half (the key, the cache, the rule), so the supervisor's memory estimate can
read a decision without importing ``llama_cpp``; the measuring half runs in the worker.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from warren.settings import ModelSettings

PROBE_DEPTH = 256  # tokens of context the probe decodes at: Intel's slowdown already shows there (0.62x)
SLOWER = 0.90  # flash attention stays on unless it decodes below this fraction of the speed without it
MODES = ("auto", "on", "off")


@dataclass(frozen=True, slots=True)
class Measured:
    on: float  # tokens/s decoding at PROBE_DEPTH with flash attention
    off: float  # and without
    depth: int = PROBE_DEPTH

    @property
    def choice(self) -> bool:
        return choose(self.on, self.off)


def choose(on: float, off: float) -> bool:
    """Flash attention stays on (llama.cpp's own default, and smaller at long contexts) unless it is clearly
    slower: noise of a few percent must not flip the choice, a 2.8x slowdown must."""
    return on >= SLOWER * off


def cache_file() -> Path:
    root = os.environ.get("WARREN_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
        / "warren"
    return Path(root) / "flash-attention.json"


@functools.cache
def _cpu() -> str:
    """The CPU model and its instruction sets: what the speed of the kernels depends on."""
    name, flags = platform.machine(), ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and name == platform.machine():
                name = line.split(":", 1)[1].strip()
            elif line.startswith(("flags", "Features")) and not flags:
                flags = " ".join(sorted(line.split(":", 1)[1].split()))
    return f"{name} {hashlib.sha256(flags.encode()).hexdigest()[:12]}"


def key(model: Path, threads: int, quant_kv: int, engine_version: str) -> str:
    """What the measurement depends on: the model file (path, size, modification time), the CPU, the engine,
    the threads and the K cache type."""
    try:
        st = model.stat()
        stamp = f"{st.st_size}:{st.st_mtime_ns}"
    except OSError:
        stamp = "?"
    return f"{model.resolve()}|{stamp}|{_cpu()}|{engine_version}|t{threads}|k{quant_kv}"


@functools.cache
def engine_version() -> str:
    """The engine's version, without importing it (the supervisor never imports ``llama_cpp``); read once:
    a metadata lookup scans the installed packages (~50 ms)."""
    try:
        return metadata.version("llama_cpp_python")
    except metadata.PackageNotFoundError:
        return "?"


def expected(settings: ModelSettings) -> bool:
    """Whether a worker will run ``settings`` with flash attention, as far as is known before it loads (for
    the memory estimate): forced, or measured earlier; unmeasured, llama.cpp's "auto" (on)."""
    if settings.flash_attention != "auto":
        return settings.flash_attention == "on"
    measured = recall(key(settings.path, settings.threads, settings.quant_kv, engine_version()))
    return measured.choice if measured is not None else True


def _read() -> dict[str, dict[str, float]]:
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def recall(cache_key: str) -> Measured | None:
    """The measurement kept for this key, if any (a broken entry counts as none)."""
    entry = _read().get(cache_key)
    try:
        return Measured(float(entry["on"]), float(entry["off"]), int(entry["depth"])) if entry else None
    except (KeyError, TypeError, ValueError):
        return None


def remember(cache_key: str, measured: Measured) -> None:
    """Keep a measurement (written whole to a temporary file, then renamed: two workers may write at once;
    the last one wins, and both measured the same thing)."""
    path = cache_file()
    data = _read()
    data[cache_key] = asdict(measured)
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
        tmp.replace(path)
