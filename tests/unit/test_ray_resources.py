"""How node budgets and reservations are written in Ray's resources (``warren/worker/ray_resources.py``)."""

from __future__ import annotations

import pytest

from warren.worker.ray_resources import GPU_SHARE, MIB, node_budget, node_threads, reservation

GIB = 1 << 30


@pytest.mark.parametrize(("resources", "flag", "budget"), [
    ({"warren_memory_mib": 300, "memory": 8 * GIB}, "", 300 * MIB),  # declared: the operator's figure
    ({"warren_memory_mib": 300, "memory": 8 * GIB}, "1G", 300 * MIB),  # declared wins over the flag
    ({"memory": 8 * GIB}, "", 6 * GIB),  # Ray's memory × 0.75
    ({"memory": 8 * GIB}, "50%", 4 * GIB),  # a share of the node's own memory
    ({"memory": 8 * GIB}, "2G", 2 * GIB),
    ({"memory": 8 * GIB}, "20G", 8 * GIB),  # never more than Ray lets actors request
    ({"CPU": 4}, "", 0),  # no memory Ray knows of: the node takes no workers
])
def test_node_budget(resources: dict[str, float], flag: str, budget: int) -> None:
    assert node_budget(resources, flag) == budget


def test_node_threads_only_where_declared() -> None:
    assert node_threads({"warren_threads": 8}) == 8 and node_threads({"CPU": 8}) == 0


@pytest.mark.parametrize(("resources", "reserve", "threads", "layers", "options"), [
    ({"warren_memory_mib": 300}, 200 * MIB + 1, 4, 0, {"num_cpus": 0, "resources": {"warren_memory_mib": 201}}),
    ({"memory": 8 * GIB}, 200 * MIB, 4, 0, {"num_cpus": 0, "memory": 200 * MIB}),
    ({"memory": 8 * GIB, "warren_threads": 8}, 200 * MIB, 4, 0,
     {"num_cpus": 0, "memory": 200 * MIB, "resources": {"warren_threads": 4}}),
    ({"memory": 8 * GIB, "GPU": 1}, 200 * MIB, 4, 20, {"num_cpus": 0, "memory": 200 * MIB, "num_gpus": GPU_SHARE}),
    ({"memory": 8 * GIB}, 200 * MIB, 4, 20, {"num_cpus": 0, "memory": 200 * MIB}),  # no GPU there: none asked
    ({"memory": 8 * GIB}, 0, 4, 0, {"num_cpus": 0}),
])
def test_reservation(resources: dict[str, float], reserve: int, threads: int, layers: int,
                     options: dict[str, object]) -> None:
    assert reservation(resources, reserve, threads, layers) == options
