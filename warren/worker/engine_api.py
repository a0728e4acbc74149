"""The interface between a worker and the library that runs the model.

``LlamaEngine`` (``engine.py``) is the only implementation that imports ``llama_cpp``; tests use fake
engines with the same shape to produce faults a real model cannot produce on demand.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from warren.model_info import ModelInfo
from warren.params import GenerationParams, GenerationResult
from warren.settings import ModelSettings
from warren.worker.prefault import Prefault


class Engine(Protocol):
    def load(self, settings: ModelSettings, progress: Callable[[float], None], prefault: Prefault | None = None
             ) -> ModelInfo:
        """Load the model; return its description (the ``Ready`` frame's ``model``). ``prefault`` is the
        memory the context will need at once, which an engine may fault in while the model loads."""
        ...

    def generate(self, params: GenerationParams, emit: Callable[[str], None] | None,
                 cancelled: Callable[[], bool]) -> GenerationResult:
        """Generate; call ``emit`` with each safe-to-show piece when streaming."""
        ...

    def tokenize(self, text: str, special: bool) -> list[int]: ...

    # Optional: ``set_threads(n, cores)`` records the worker's share of the cores (called on the reader thread);
    # the engine applies it before its next decode step (``warren/pool/compute.py``).
    # Optional: ``park()`` frees the context and the weights' pages and keeps the model, so that the next
    # ``load`` with the same model only creates a context (``warren/worker/parking.py``).
    # Optional: ``concurrent_tokens`` (a bool, read per frame) true when ``tokenize``/``detokenize`` may run
    # on another thread while ``generate`` runs; the worker then answers them beside a generation
    # (``warren/worker/child.py``). Absent or false: they wait for the main thread.

    def detokenize(self, ids: list[int]) -> str: ...
