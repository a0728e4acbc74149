"""Fixtures of the Ray launcher's tests: one three-node cluster per module (``tests/ray/cluster.py``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ray.cluster_utils import Cluster

from tests.ray.cluster import NODES, add_node, three_nodes

BUDGET_MIB = 300  # each node's warren budget: one SmolLM2 at 2,048 tokens (~208 MiB), never two


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    yield from three_nodes(BUDGET_MIB)


@pytest.fixture
def cluster(ray_cluster: Cluster) -> Iterator[Cluster]:
    """The module's cluster, with three nodes again after the test (a test may kill one)."""
    yield ray_cluster
    while len(ray_cluster.list_all_nodes()) < NODES:
        add_node(ray_cluster, BUDGET_MIB)
