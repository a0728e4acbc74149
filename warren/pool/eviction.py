"""Which idle instances to unload so a new one fits: a pure function, no I/O, no clock.

Candidates are instances that are ready (or parked), unpinned, and have no request in flight or
queued. Parked instances go first (they hold memory but no ``--max-models`` slot: they are taken only while
memory or threads lack); then lower ``priority``; within a priority, least recently used first; among equally recent ones,
the one that is cheaper to load again (measured load seconds) goes first. The answer is the shortest such prefix that makes room for the
new instance in memory, in count and — on a node whose compute threads are reserved (a cluster's, see
``warren/pool/placement.py``) — in threads, or ``None`` when even all candidates are not enough (the
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
    threads: int = 0  # compute threads it holds (counted only where threads are reserved)


def choose_victims(candidates: Iterable[Candidate], *, need: int, free: int, slots_free: int,
                   need_threads: int = 0, free_threads: int | None = None) -> list[str] | None:
    """Names to evict, in order, so that ``need`` bytes, one instance slot and — unless ``free_threads`` is
    None (threads not reserved) — ``need_threads`` threads become available."""

    def fits() -> bool:
        return need <= free and slots_free >= 1 and (free_threads is None or need_threads <= free_threads)

    if fits():
        return []
    victims: list[str] = []
    for c in sorted(candidates, key=lambda c: (not c.parked, c.priority, c.last_used, c.reload_seconds)):
        if c.parked and need <= free and (free_threads is None or need_threads <= free_threads):
            continue  # only a slot lacks, and a parked instance holds none: stopping it would not help
        victims.append(c.name)
        free += c.bytes
        if not c.parked:
            slots_free += 1
        if free_threads is not None:
            free_threads += c.threads
        if fits():
            return victims
    return None
