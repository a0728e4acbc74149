"""Placement on a cluster: the policy with a budget per node, driven as a transcript (warren/pool/placement.py).

Each test reads as what the operator would see: which node a load goes to, what is evicted where, and
what a request is told when no node can take its model.
"""

from __future__ import annotations

import pytest

from tests.fakes.recording_effects import RecordingEffects
from warren.pool.eviction import Candidate, choose_victims
from warren.pool.placement import Capacity, Option, choose
from warren.pool.policy import PoolPolicy
from warren.pool.state import InstanceState

GB = 1 << 30


@pytest.fixture
def fx() -> RecordingEffects:
    return RecordingEffects()


def cluster(fx: RecordingEffects, **nodes: int | Capacity) -> PoolPolicy:
    """A policy on nodes of the given budgets (GB, or a whole ``Capacity``)."""
    return PoolPolicy(fx, nodes={n: c if isinstance(c, Capacity) else Capacity(c * GB) for n, c in nodes.items()})


def loaded(p: PoolPolicy, fx: RecordingEffects, name: str, need: int, now: float, **kw: object) -> str:
    """Request, finish loading, release; returns the node it went to."""
    p.request(0, name, need, now, **kw)  # type: ignore[arg-type]
    p.load_finished(name, ok=True, measured=0, load_seconds=0.3, now=now)
    p.released(name, now)
    fx.take()
    return p.residents[name].node


def test_the_choice_fits_first_then_fewest_and_oldest_victims_then_least_loaded_then_last_node() -> None:
    fits_busy, fits_idle = Option("a", (), 0.8, False), Option("b", (), 0.1, False)
    evicting = Option("c", ("x",), 0.0, True, recency=1.0)
    assert choose([evicting, fits_busy, fits_idle]) == fits_idle
    assert choose([Option("a", ("x", "y"), 0.0, True, 1.0), Option("b", ("z",), 0.9, False, 1.0)]).node == "b"
    assert choose([Option("a", ("x",), 0.0, True, 9.0), Option("b", ("z",), 0.9, False, 5.0)]).node == "b"
    assert choose([Option("b", (), 0.5, False), Option("a", (), 0.5, True)]).node == "a"  # warm page cache
    assert choose([Option("b", (), 0.5, False), Option("a", (), 0.5, False)]).node == "a"  # then by id
    assert choose([]) is None


def test_models_spread_over_the_nodes_and_land_elsewhere_when_a_node_is_full(fx: RecordingEffects) -> None:
    p = cluster(fx, n1=3, n2=3)
    assert loaded(p, fx, "a", 2 * GB, 0) == "n1"  # both empty: the first by id
    assert loaded(p, fx, "b", 2 * GB, 1) == "n2"  # n1 has 1 GB left: b does not fit there
    assert loaded(p, fx, "c", GB // 2, 2) == "n1"  # fits on both, equally loaded: by id
    assert p.reserved_on("n1") == 2 * GB + GB // 2 and p.reserved_on("n2") == 2 * GB
    assert p.budget == 6 * GB


def test_the_least_loaded_node_wins_among_those_it_fits(fx: RecordingEffects) -> None:
    p = cluster(fx, n1=4, n2=4)
    loaded(p, fx, "big", 3 * GB, 0)  # n1
    assert loaded(p, fx, "small", GB // 4, 1) == "n2"


def test_eviction_happens_on_the_node_that_needs_it_only(fx: RecordingEffects) -> None:
    p = cluster(fx, n1=2, n2=3)
    loaded(p, fx, "a", 2 * GB, 0)  # n1 (same share: by id)
    loaded(p, fx, "b", 2 * GB, 1)  # n2
    p.request(1, "c", 2 * GB, 2)  # fits nowhere: evict the least recently used of the nodes' idle ones
    assert fx.take() == [("load", "c", ("a",)), ("grant", 1, "c")]
    assert p.residents["c"].node == "n1" and p.residents["b"].phase is InstanceState.READY
    p.exited("a", 3)
    p.released("c", 3)
    p.request(2, "d", 2 * GB, 4)  # now b (used at 1) is older than c (3): n2 it is
    assert fx.take() == [("load", "d", ("b",)), ("grant", 2, "d")]


def test_a_model_goes_back_to_the_node_it_last_ran_on_when_loads_are_equal(fx: RecordingEffects) -> None:
    p = cluster(fx, n1=4, n2=4)
    loaded(p, fx, "a", GB, 0, nodes=["n2"])
    p.unload("a", "unload requested", 1)
    fx.take()
    p.exited("a", 2)
    assert p.last_node["a"] == "n2"
    assert loaded(p, fx, "a", GB, 3) == "n2"  # both empty now: its file is in n2's page cache


def test_a_model_is_placed_only_on_nodes_that_have_its_file(fx: RecordingEffects) -> None:
    p = cluster(fx, n1=8, n2=8, n3=8)
    loaded(p, fx, "x", 4 * GB, 0)  # n1
    assert loaded(p, fx, "only-on-n1", GB, 1, nodes=["n1"]) == "n1"  # although n2 and n3 are emptier
    p.request(2, "nowhere", GB, 2, nodes=["n9"])
    (call,) = fx.take()
    assert call[:3] == ("reject", 2, "WorkerNotPlaced") and "none has its file" in call[3]


def test_too_large_for_every_node_is_refused_with_the_largest_budget(fx: RecordingEffects) -> None:
    p = cluster(fx, n1=2, n2=3)
    p.request(1, "huge", 4 * GB, 0)
    (call,) = fx.take()
    assert call[:3] == ("reject", 1, "DoesNotFit")
    assert "4096 MiB" in call[3] and "any node" in call[3] and "3072 MiB" in call[3]
    p.request(2, "fits-n2", 3 * GB, 0)  # more than the smaller node, but the larger one takes it
    assert fx.take() == [("load", "fits-n2", ()), ("grant", 2, "fits-n2")]
    assert p.residents["fits-n2"].node == "n2"


def test_a_cluster_without_nodes_refuses_at_once(fx: RecordingEffects) -> None:
    p = cluster(fx)
    p.request(1, "a", GB, 0)
    (call,) = fx.take()
    assert call[:3] == ("reject", 1, "WorkerNotPlaced") and "there is none" in call[3]


def test_a_node_that_joins_takes_the_waiting_request(fx: RecordingEffects) -> None:
    p = cluster(fx, n1=2)
    p.request(1, "busy", 2 * GB, 0)
    p.load_finished("busy", ok=True, measured=0, load_seconds=0.1, now=0)
    fx.take()
    p.request(2, "b", GB, 1)
    assert fx.take() == [] and len(p.waiting) == 1  # n1 is held by a running request
    p.set_nodes({"n1": Capacity(2 * GB), "n2": Capacity(2 * GB)}, now=2)
    assert fx.take() == [("load", "b", ()), ("grant", 2, "b")]
    assert p.residents["b"].node == "n2"


def test_a_node_that_left_is_not_chosen_and_its_residents_count_for_nothing(fx: RecordingEffects) -> None:
    p = cluster(fx, n1=2, n2=2)
    loaded(p, fx, "a", 2 * GB, 0)  # n1
    p.set_nodes({"n2": Capacity(2 * GB)}, now=1)  # n1 left; a's exit is reported later
    assert p.budget == 2 * GB and p.node_status() == [
        {"node": "n2", "budget": 2 * GB, "reserved": 0, "threads": None, "threads_reserved": None, "models": []}]
    assert loaded(p, fx, "b", 2 * GB, 2) == "n2"
    p.exited("a", 3)
    assert "a" not in p.residents and p.last_node["a"] == "n1"


def test_threads_are_reserved_where_a_node_counts_them(fx: RecordingEffects) -> None:
    """A node that reserves 4 compute threads holds two 2-thread models whatever its memory: a third goes
    elsewhere, though that node is fuller, or — if only that node has its file — evicts an idle one."""
    p = cluster(fx, n1=Capacity(100 * GB, threads=4), n2=Capacity(100 * GB))
    loaded(p, fx, "big", 50 * GB, 0, nodes=["n2"])
    assert loaded(p, fx, "a", GB, 1, threads=2) == "n1"
    assert loaded(p, fx, "b", GB, 2, threads=2) == "n1"
    assert p.node_status()[0]["threads_reserved"] == 4
    assert loaded(p, fx, "c", GB, 3, threads=2) == "n2"  # n1 is far emptier, but has no thread left
    p.request(4, "d", GB, 4, threads=2, nodes=["n1"])  # only n1 has d: a's threads (LRU) are freed for it
    assert fx.take() == [("load", "d", ("a",)), ("grant", 4, "d")]


def test_a_thread_short_node_evicts_by_threads_too() -> None:
    assert choose_victims([Candidate("a", GB, 0.0, 0.0, threads=2), Candidate("b", GB, 1.0, 0.0, threads=2)],
                          need=0, free=10 * GB, slots_free=5, need_threads=3, free_threads=0) == ["a", "b"]
    assert choose_victims([Candidate("a", GB, 0.0, 0.0, threads=2)], need=0, free=GB, slots_free=1,
                          need_threads=3, free_threads=0) is None


def test_one_machine_is_one_node_and_reads_as_before(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=2 * GB)
    assert list(p.nodes) == ["local"] and p.budget == 2 * GB
    p.request(1, "huge", 3 * GB, 0)
    (call,) = fx.take()
    assert "more than the whole memory budget of 2048 MiB" in call[3]
