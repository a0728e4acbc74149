"""Placement: which node a load goes to, when the pool has several (a cluster). Pure, like eviction.

A pool on one machine has one node (``LOCAL``) and nothing to choose. On a cluster (``warren --cluster``)
each node has its own budget (``Capacity``: memory, and compute threads where they are reserved), and for
each load the policy (``warren/pool/policy.py``) works out, on every node that may take the model (its
file is there), whether it fits now or after evicting which idle instances of *that* node
(``warren/pool/eviction.py``). This module picks among those ``Option``s:

1. a node where the model fits without evicting anything, before one where something must go, and then
   the fewest victims, then the least recently used ones: an instance evicted is a load someone pays for
   later (within a node, ``choose_victims`` has already put them in that order);
2. the least loaded node: the smallest share of its memory budget reserved, so models spread out and
   each node keeps room for the next one;
3. the node where the model was last loaded: its file is in that node's page cache (a warm load);
4. the node id, so the same state gives the same choice (tests read as transcripts).

Ray then starts the worker on that node (``warren/worker/ray_launcher.py``), holding the same
reservation in Ray's resources, so Ray never places two reservations on a node that cannot hold them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Capacity:
    """What the pool may reserve on one node."""

    memory: int  # bytes: the node's budget
    threads: int = 0  # compute threads; 0: not reserved on this node


@dataclass(frozen=True, slots=True)
class Option:
    """One node the model could be loaded on, and at what cost."""

    node: str
    victims: tuple[str, ...]  # idle instances of that node to evict first (empty: it fits now)
    load: float  # the share of the node's budget reserved now
    last: bool  # the model was last loaded there
    recency: float = 0.0  # when the most recently used of the victims was last used (0: no victims)


def choose(options: Iterable[Option]) -> Option | None:
    """The best option (module docstring), or None when there is none: the request waits for room."""
    return min(options, key=lambda o: (len(o.victims) > 0, len(o.victims), o.recency, o.load, not o.last, o.node),
               default=None)
