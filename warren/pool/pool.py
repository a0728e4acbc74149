"""The pool: the model instances this server can serve, and which one is active.

Today it holds the one ``--model`` entry (the *active* model, which un-prefixed KoboldCpp routes
serve). The multi-model pool (memory budget, eviction, keep-alive, hot swap) grows here behind the
same ``get``/``active`` surface, so the dialects do not change when it does.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from warren.errors import ModelNotFound, WarrenError
from warren.pool.instance import ModelInstance
from warren.settings import ModelSettings, ServerSettings

log = logging.getLogger(__name__)


class Pool:
    def __init__(self, server: ServerSettings, models: list[ModelSettings], *, heartbeat: bool = True) -> None:
        self.server = server
        self.instances: dict[str, ModelInstance] = {
            m.name: ModelInstance(m, queue_limit=server.queue_limit, heartbeat=heartbeat) for m in models
        }
        self.active_name: str | None = models[0].name if models else None

    @property
    def active(self) -> ModelInstance | None:
        return self.instances.get(self.active_name) if self.active_name else None

    def names(self) -> list[str]:
        return list(self.instances)

    def get(self, name: str | None = None) -> ModelInstance:
        """The instance for ``name`` (a catalog name, ``koboldcpp/<name>`` or a handle), or the active one."""
        if not name:
            if self.active is None:
                raise ModelNotFound("no model is loaded (the server was started with --nomodel)",
                                    hint="start warren with a model file")
            return self.active
        key = name.removeprefix("koboldcpp/").split("@", 1)[0]
        instance = self.instances.get(key)
        if instance is None:
            known = ", ".join(self.instances) or "none"
            raise ModelNotFound(f"model {name!r} not found; available: {known}", model=name)
        return instance

    async def start(self) -> None:
        """Load the active model at start-up so the first request does not pay for it."""
        if self.active is not None:
            try:
                await self.active.ensure_ready()
            except WarrenError as exc:
                log.error("model failed to load model=%s error=%s", self.active.name, exc.message)

    async def stop(self) -> None:
        await asyncio.gather(*(i.stop() for i in self.instances.values()), return_exceptions=True)

    def status(self) -> dict[str, Any]:
        return {"active": self.active_name, "instances": [i.status() for i in self.instances.values()]}
