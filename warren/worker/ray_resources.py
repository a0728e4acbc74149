"""How a node's budget and a worker's reservation are written in Ray's resources. Pure: no Ray import.

The pool decides where a worker goes and what it reserves there (``warren/pool/placement.py``); Ray
places the worker's actor. Both must agree, or Ray would leave an actor pending on a node warren thinks
has room: so each node's budget *is* a Ray resource total, and each worker's actor requests exactly the
reservation warren counts for it (in whole MiB, which the pool rounds its reservations to on a cluster).

**Memory.** A node that declares the custom resource ``warren_memory_mib`` (``ray start --resources
'{"warren_memory_mib": 8192}'``) gives warren that budget, and its workers' actors request
``warren_memory_mib``: the operator's budget per node, and a resource no other Ray work takes. A node
without it gets its budget from its own memory as Ray counted it when the node started (Ray's built-in
``memory`` resource): ``--memory-budget`` as bytes per node or a share of that (``60%``), else
``DEFAULT_SHARE`` of it, and its workers request Ray's ``memory``.

**Threads.** A node that declares ``warren_threads`` reserves compute threads: each worker's actor requests
its model's threads (``--threads``, or the batch threads if more), and warren's policy counts them the same
way, so a node never holds resident models whose threads exceed what it declared. A node without it does
not reserve threads (a resident model computes only while it generates; on one machine the pool does not
reserve threads either).

**GPU.** A model with offloaded layers requests ``GPU_SHARE`` of a GPU on a node that has one, so Ray
counts it there; its GPU memory is in its footprint (NVML, measured on the node) and so in the budget.

Everything else is Ray's defaults for an actor that uses none: ``num_cpus=0`` (Ray's CPU count would cap a
node's resident models at its cores, while an idle model uses none).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from warren.units import parse_bytes

MIB = 1 << 20
MEMORY_RESOURCE = "warren_memory_mib"  # a node's warren budget in MiB (Ray resources are counts, not bytes)
THREADS_RESOURCE = "warren_threads"
RAY_MEMORY = "memory"  # Ray's own: bytes of a node's memory, measured by Ray when the node started
DEFAULT_SHARE = 0.75  # as on one machine (warren/validation.py): room for the OS and Ray's own processes
GPU_SHARE = 0.01  # what one model with offloaded layers requests of a GPU: up to 100 share one


def node_budget(resources: Mapping[str, float], memory_budget: str = "") -> int:
    """The bytes warren may reserve on a node with these Ray resources (0: none; it takes no workers)."""
    if MEMORY_RESOURCE in resources:
        return int(resources[MEMORY_RESOURCE]) * MIB
    memory = int(resources.get(RAY_MEMORY, 0))
    if memory_budget:
        wanted = parse_bytes(memory_budget, memory) or 0
        return min(wanted, memory) // MIB * MIB  # never more than Ray would let its actors request
    return int(memory * DEFAULT_SHARE) // MIB * MIB


def node_threads(resources: Mapping[str, float]) -> int:
    """The compute threads warren may reserve on a node; 0: it does not reserve threads."""
    return int(resources.get(THREADS_RESOURCE, 0))


def reservation(resources: Mapping[str, float], reserve: int, threads: int, gpu_layers: int) -> dict[str, Any]:
    """The ``.options()`` of a worker's actor that hold its reservation on a node with ``resources``:
    ``reserve`` bytes, ``threads`` compute threads, and ``gpu_layers`` offloaded layers."""
    options: dict[str, Any] = {"num_cpus": 0}
    custom: dict[str, float] = {}
    mib = math.ceil(reserve / MIB)
    if MEMORY_RESOURCE in resources:
        custom[MEMORY_RESOURCE] = mib
    elif mib:
        options["memory"] = mib * MIB
    if node_threads(resources) and threads > 0:
        custom[THREADS_RESOURCE] = threads
    if gpu_layers > 0 and resources.get("GPU", 0) > 0:
        options["num_gpus"] = GPU_SHARE
    if custom:
        options["resources"] = custom
    return options
