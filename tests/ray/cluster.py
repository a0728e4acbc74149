"""A Ray cluster of three nodes on this machine, for the tests of the Ray launcher (``tests/ray/``).

``ray.cluster_utils.Cluster`` runs a head and two more nodes as processes of this machine (a GCS, and a
raylet per node); each node declares the fake resource warren reads as its budget (``warren_memory_mib``,
``warren/worker/ray_resources.py``), so three "machines" with small budgets fit on one test box. They are
kept small for a 2-core machine that runs other tests too: one CPU each, 100 MB of object store, no
dashboard. The cluster's health checks are fast, so a killed node is declared dead in about two
seconds instead of Ray's default fifteen: the fault tests wait for that verdict, never for a time.

The test process is not a Ray driver (it only starts and kills the nodes); the warren servers under test
join the cluster with ``--cluster ADDRESS``, as a user's would.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ray.cluster_utils import Cluster

from warren.worker.ray_resources import MEMORY_RESOURCE

MIB = 1 << 20
NODES = 3
NODE_TIMEOUT = 120  # seconds for a node to join (a 2-core machine busy with other tests)
OBJECT_STORE = 100 * MIB  # Ray's minimum is 75 MiB; warren puts nothing in the object store
# A dead node is noticed after period × threshold (0.5 s × 4) instead of 3 s × 5.
FAST_HEALTH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
               "health_check_timeout_ms": 500, "health_check_failure_threshold": 4}


def node_args(budget_mib: int) -> dict[str, Any]:
    return {"num_cpus": 1, "object_store_memory": OBJECT_STORE, "include_dashboard": False,
            "resources": {MEMORY_RESOURCE: budget_mib}}


def three_nodes(budget_mib: int) -> Iterator[Cluster]:
    """A head and two nodes, each with ``budget_mib`` MiB for warren; shut down when the generator ends."""
    cluster = Cluster(initialize_head=True,
                      head_node_args={**node_args(budget_mib), "_system_config": FAST_HEALTH})
    try:
        while len(cluster.list_all_nodes()) < NODES:
            add_node(cluster, budget_mib)
        yield cluster
    finally:
        cluster.shutdown()


def add_node(cluster: Cluster, budget_mib: int) -> None:
    cluster.add_node(**node_args(budget_mib))
    cluster.wait_for_nodes(timeout=NODE_TIMEOUT)


def kill_node(cluster: Cluster, node_id: str) -> None:
    """Kill a node that is not the head (the head holds the cluster's GCS) at once: SIGKILL to its raylet
    and its processes, no goodbye to the cluster, as when a machine goes down."""
    node = next(n for n in cluster.worker_nodes if n.node_id == node_id)
    cluster.remove_node(node, allow_graceful=False)


def worker_node_ids(cluster: Cluster) -> set[str]:
    return {n.node_id for n in cluster.worker_nodes}
