"""Which idle instances to unload so a new one fits: a pure function, no I/O, no clock.

Candidates are instances that are ready (or parked), unpinned, and have no request in flight or
queued. Parked instances go first; then lower ``priority``; within a priority, least recently used first; among equally recent ones,
the one that is cheaper to load again (measured load seconds) goes first. The answer is the shortest such prefix that makes room for the
new instance in both memory and count, or ``None`` when even all candidates are not enough (the
caller then waits for busy instances to finish).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Candidate:
    name: str
    bytes: int
    last_used: float
    reload_seconds: float
    priority: int = 0
    parked: bool = False  # parked instances go first: they were evicted once already


def choose_victims(candidates: Iterable[Candidate], *, need: int, free: int, slots_free: int
                   ) -> list[str] | None:
    """Names to evict, in order, so that ``need`` bytes and one instance slot become available."""
    if need <= free and slots_free >= 1:
        return []
    victims: list[str] = []
    for c in sorted(candidates, key=lambda c: (not c.parked, c.priority, c.last_used, c.reload_seconds)):
        victims.append(c.name)
        free += c.bytes
        slots_free += 1
        if need <= free and slots_free >= 1:
            return victims
    return None
