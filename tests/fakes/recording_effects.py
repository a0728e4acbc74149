"""An ``Effects`` that records every decision, so policy tests read like a transcript."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from warren.errors import WarrenError


@dataclass
class RecordingEffects:
    calls: list[tuple] = field(default_factory=list)

    def start_load(self, model: str, evict: Sequence[str]) -> None:
        self.calls.append(("load", model, tuple(evict)))

    def park(self, model: str) -> None:
        self.calls.append(("park", model))

    def stop(self, model: str, reason: str) -> None:
        self.calls.append(("stop", model, reason))

    def drop_state(self, model: str) -> None:
        self.calls.append(("drop_state", model))

    def grant(self, ticket: int, model: str) -> None:
        self.calls.append(("grant", ticket, model))

    def reject(self, ticket: int, error: WarrenError) -> None:
        self.calls.append(("reject", ticket, type(error).__name__, error.message))

    def take(self) -> list[tuple]:
        out, self.calls = self.calls, []
        return out
