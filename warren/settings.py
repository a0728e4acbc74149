"""Resolved settings: what validation hands to the server and to each worker.

These are plain frozen values built *after* every rule has passed (``warren/validation.py``), so the
rest of warren never sees a raw flag, a KoboldCpp alias or an unchecked number. ``ModelSettings`` is
also what crosses to a worker in its launch frame, hence ``as_wire``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """How one catalog entry is loaded. Equal settings mean an existing instance can be reused."""

    name: str
    path: Path
    context_size: int = 8192
    threads: int = 2
    batch_threads: int = 2
    gpu_layers: int = 0
    batch_size: int = 512
    use_mmap: bool = True
    use_mlock: bool = False
    flash_attention: str = "auto"  # "on", "off", or "auto": measured per model and CPU (warren/flash_attention.py)
    quant_kv: int = 0
    rope_freq_scale: float = 0.0  # 0 = the model's own value
    rope_freq_base: float = 0.0  # 0 = the model's own value
    parallel: int = 1  # requests served at once from one context (--parallelrequests): sequences in a batch
    context_shift: bool = True  # KoboldCpp's ContextShift (--noshift turns it off): warren/worker/shift.py
    engine: str = "llama"  # "llama" in production; tests may name a fake engine ("module:factory")

    def as_wire(self) -> dict[str, Any]:
        data = asdict(self)
        data["path"] = str(self.path)
        return data

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ModelSettings:
        return cls(**{**data, "path": Path(data["path"])})


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 5001
    multiuser: int = 1
    password: str | None = None
    max_request_bytes: int = 32 * 1024 * 1024
    default_gen_amount: int = 768
    gen_limit: int = 0
    quiet: bool = False
    debug: int = 0
    admin: bool = False
    admin_dir: Path | None = None
    admin_password: str | None = None
    models_dirs: tuple[Path, ...] = ()  # --admindir and --models-dir: catalog directories
    catalog_file: Path | None = None
    memory_budget: int = 0  # bytes
    cluster: str = ""  # a Ray address (--cluster): workers are placed on its nodes (warren/worker/ray_launcher.py)
    node_budget: str = ""  # --memory-budget as given: on a cluster, each node's, read against its own memory
    max_models: int = 0
    keep_alive: float = 300.0
    load_wait: float = 60.0
    warm_spare: bool = True
    park: bool = True  # park evicted models when their parked footprint fits (warren/pool/policy.py)
    cors_origins: tuple[str, ...] = ("*",)
    max_connections: int = 64  # requests served at once (warren/api/connections.py)
    header_timeout: float = 10.0  # seconds to send a request's headers
    body_timeout: float = 30.0  # seconds a body may pause between chunks
    preload_story: str = ""  # --preloadstory: the story's JSON text, read at start-up (warren/story.py)
    chat_adapter: str = "AutoGuess"  # --chatcompletionsadapter (warren/api/chat_format.py)
    embeddings_model: Path | None = None  # --embeddingsmodel: a catalog entry for embeddings (warren/api/embedding.py)
    kvcache_dir: Path | None = None  # --kvcache-dir: the disk tier of stopped workers' KV state (worker/kvfile.py)
    kvcache_bytes: int = 0  # --kvcache-size: the most its files take

    @property
    def queue_limit(self) -> int:
        """Waiters allowed behind the running request, as KoboldCpp computes it from --multiuser."""
        if self.multiuser <= 0:
            return 0
        return self.multiuser - 1 if self.multiuser > 1 else 6
