"""The pool policy, driven synchronously with a recording Effects and a plain number for the clock."""

from __future__ import annotations

import pytest

from tests.fakes.recording_effects import RecordingEffects
from warren.pool.eviction import Candidate, choose_victims
from warren.pool.policy import PoolPolicy
from warren.pool.state import InstanceState

GB = 1 << 30


@pytest.fixture
def fx() -> RecordingEffects:
    return RecordingEffects()


def ready(policy: PoolPolicy, name: str, now: float, measured: int = 0, load_seconds: float = 0.3) -> None:
    policy.load_finished(name, ok=True, measured=measured, load_seconds=load_seconds, now=now)


def loaded(policy: PoolPolicy, fx: RecordingEffects, name: str, need: int, now: float, ticket: int = 0) -> None:
    """Request, finish loading, release: the model is resident and idle."""
    policy.request(ticket, name, need, now)
    ready(policy, name, now)
    policy.released(name, now)
    fx.take()


def test_first_request_loads_and_is_granted(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=4 * GB)
    p.request(1, "a", 1 * GB, now=0)
    assert fx.take() == [("load", "a", ()), ("grant", 1, "a")]
    assert p.residents["a"].phase is InstanceState.LOADING and p.reserved == 1 * GB


def test_requests_for_a_loading_model_join_the_load(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=4 * GB)
    p.request(1, "a", GB, 0)
    p.request(2, "a", GB, 0)
    assert fx.take() == [("load", "a", ()), ("grant", 1, "a"), ("grant", 2, "a")]
    assert p.residents["a"].in_flight == 2


def test_measured_footprint_replaces_the_reservation(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=4 * GB)
    p.request(1, "a", GB, 0)
    ready(p, "a", 1, measured=GB // 2)
    assert p.reserved == GB // 2


def test_a_model_larger_than_the_budget_is_refused_at_once(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=2 * GB)
    p.request(1, "huge", 3 * GB, 0)
    (call,) = fx.take()
    assert call[:3] == ("reject", 1, "DoesNotFit")
    assert "3072 MiB" in call[3] and "2048 MiB" in call[3]
    assert not p.waiting


def test_idle_lru_is_evicted_to_make_room(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=3 * GB)
    loaded(p, fx, "a", GB, now=0)
    loaded(p, fx, "b", GB, now=10)
    p.request(5, "c", 2 * GB, now=20)
    assert fx.take() == [("load", "c", ("a",)), ("grant", 5, "c")]
    assert p.residents["a"].phase is InstanceState.STOPPING
    p.exited("a", 21)
    assert "a" not in p.residents


def test_ties_evict_the_cheaper_reload_first(fx: RecordingEffects) -> None:
    assert choose_victims([Candidate("slow", GB, 5.0, 9.0), Candidate("fast", GB, 5.0, 0.2)],
                          need=GB, free=0, slots_free=1) == ["fast"]
    assert choose_victims([Candidate("x", GB, 1.0, 0.0)], need=3 * GB, free=GB, slots_free=1) is None


def test_lower_priority_is_evicted_before_older_use(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=2 * GB)
    loaded(p, fx, "old-important", GB, now=0)
    loaded(p, fx, "new-unimportant", GB, now=50)
    p.configure("old-important", priority=5)
    p.request(9, "c", GB, now=60)
    assert fx.take() == [("load", "c", ("new-unimportant",)), ("grant", 9, "c")]


def test_busy_and_pinned_instances_are_never_evicted(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=2 * GB, wait_seconds=30)
    p.request(1, "busy", GB, 0)
    ready(p, "busy", 0)
    loaded(p, fx, "pinned", GB, 0)
    p.configure("pinned", pinned=True)
    fx.take()
    p.request(2, "new", GB, 1)
    assert fx.take() == []  # nothing can go: it waits
    assert [w.model for w in p.waiting] == ["new"]
    p.released("busy", 5)  # the busy one finishes: now it is the idle LRU
    assert fx.take() == [("load", "new", ("busy",)), ("grant", 2, "new")]
    assert p.residents["pinned"].phase is InstanceState.READY


def test_waiting_past_the_deadline_is_a_503(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=GB, wait_seconds=10)
    p.request(1, "a", GB, 0)
    fx.take()
    p.request(2, "b", GB, 1)
    p.tick(5)
    assert fx.take() == []
    p.tick(11)
    (call,) = fx.take()
    assert call[:3] == ("reject", 2, "Busy") and "within 10 s" in call[3]


def test_keep_alive_expiry_default_and_per_model(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=8 * GB, keep_alive=60)
    loaded(p, fx, "a", GB, 0)
    loaded(p, fx, "b", GB, 0)
    loaded(p, fx, "forever", GB, 0)
    p.configure("b", keep_alive=10)
    p.configure("forever", keep_alive=-1)
    p.tick(30)
    assert fx.take() == [("stop", "b", "keep-alive expired")]
    p.tick(61)
    assert fx.take() == [("stop", "a", "keep-alive expired")]
    p.tick(10_000)
    assert fx.take() == []


def test_keep_alive_zero_unloads_after_the_request(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=8 * GB)
    p.request(1, "a", GB, 0)
    ready(p, "a", 1)
    p.configure("a", keep_alive=0)
    assert fx.take() == [("load", "a", ()), ("grant", 1, "a")]
    p.released("a", 2)
    assert fx.take() == [("stop", "a", "keep-alive expired")]


def test_max_models_caps_the_count(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=100 * GB, max_models=2)
    loaded(p, fx, "a", GB, 0)
    loaded(p, fx, "b", GB, 1)
    p.request(3, "c", GB, 2)
    assert fx.take() == [("load", "c", ("a",)), ("grant", 3, "c")]


def test_unload_waits_for_in_flight_requests(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=8 * GB)
    p.request(1, "a", GB, 0)
    ready(p, "a", 0)
    fx.take()
    assert p.unload("a", "admin unload", 1)
    assert fx.take() == []  # a request is still running
    p.released("a", 2)
    assert fx.take() == [("stop", "a", "admin unload")]
    assert not p.unload("nope", "x", 3)


def test_a_request_after_a_stop_waits_for_the_exit_then_reloads(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=8 * GB)
    loaded(p, fx, "a", GB, 0)
    p.unload("a", "swap", 1)
    fx.take()
    p.request(7, "a", GB, 2)
    assert fx.take() == []
    p.exited("a", 3)
    assert fx.take() == [("load", "a", ()), ("grant", 7, "a")]


def test_a_failed_load_frees_its_reservation(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=GB)
    p.request(1, "bad", GB, 0)
    p.request(2, "good", GB, 0)  # waits: "bad" holds the budget while loading
    fx.take()
    p.load_finished("bad", ok=False, measured=0, load_seconds=0, now=1)
    assert fx.take() == [("load", "good", ()), ("grant", 2, "good")]
    p.released("bad", 1)  # the failed request's release is harmless
    assert "bad" not in p.residents


def test_a_crash_frees_memory_for_waiters(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=GB)
    p.request(1, "a", GB, 0)
    ready(p, "a", 0)
    p.request(2, "b", GB, 1)
    fx.take()
    p.exited("a", 2)  # crashed mid-request
    assert fx.take() == [("load", "b", ()), ("grant", 2, "b")]


# -- parking ------------------------------------------------------------------------------------------
def parkable(policy: PoolPolicy, fx: RecordingEffects, name: str, need: int, park: int, now: float) -> None:
    policy.request(0, name, need, now, park_need=park)
    ready(policy, name, now)
    policy.released(name, now)
    fx.take()


def test_an_evicted_model_is_parked_when_its_parked_bytes_fit(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=3 * GB)
    parkable(p, fx, "a", 2 * GB, GB // 2, now=0)
    p.request(1, "b", 2 * GB, now=10, park_need=GB // 2)
    assert fx.take() == [("park", "a"), ("load", "b", ()), ("grant", 1, "b")]
    assert p.residents["a"].phase is InstanceState.PARKED and p.residents["a"].bytes == GB // 2
    assert p.reserved == 2 * GB + GB // 2
    # Back to a: it grows from its parked bytes, and b (idle, most recent) is parked in turn.
    ready(p, "b", 11)
    p.released("b", 11)
    p.request(2, "a", 2 * GB, now=20)
    assert fx.take() == [("park", "b"), ("load", "a", ()), ("grant", 2, "a")]
    assert p.residents["a"].phase is InstanceState.LOADING and p.reserved == 2 * GB + GB // 2


def test_without_room_for_its_parked_bytes_the_victim_is_stopped(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=3 * GB)
    parkable(p, fx, "a", 2 * GB, 2 * GB, now=0)  # parked it would keep as much as loaded
    p.request(1, "b", 2 * GB, now=10)
    assert fx.take() == [("load", "b", ("a",)), ("grant", 1, "b")]
    assert p.residents["a"].phase is InstanceState.STOPPING


def test_parked_models_go_first_and_are_stopped_not_parked_again(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=7 * GB // 2)
    parkable(p, fx, "a", 2 * GB, GB, now=0)
    parkable(p, fx, "b", 2 * GB, GB, now=10)  # a is parked: 2 + 1 GB
    assert p.residents["a"].phase is InstanceState.PARKED
    p.request(1, "c", 3 * GB, now=20, park_need=GB)  # a (parked) goes first, then b; no room to park b
    assert fx.take() == [("load", "c", ("a", "b")), ("grant", 1, "c")]
    assert p.residents["a"].phase is p.residents["b"].phase is InstanceState.STOPPING
    assert p.reserved == 3 * GB


def test_parked_models_expire_and_unload_like_idle_ones(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=3 * GB, keep_alive=60)
    parkable(p, fx, "a", 2 * GB, GB // 2, now=0)
    parkable(p, fx, "b", 2 * GB, GB // 2, now=10)
    assert p.residents["a"].phase is InstanceState.PARKED
    p.tick(now=61)  # a was last used at 0
    assert ("stop", "a", "keep-alive expired") in fx.take()
    p.exited("a", 62)
    assert p.unload("b", "unload requested", now=63)
    assert fx.take() == [("stop", "b", "unload requested")]


def a_parked_for_b(fx: RecordingEffects) -> PoolPolicy:
    """One slot (``--max-models 1``), room for much more: ``a`` loaded, then parked for ``b``, which is idle."""
    p = PoolPolicy(fx, budget=8 * GB, max_models=1)
    parkable(p, fx, "a", GB, GB // 4, now=0)
    p.request(1, "b", GB, now=10, park_need=GB // 4)
    assert fx.take() == [("park", "a"), ("load", "b", ()), ("grant", 1, "b")]
    ready(p, "b", 11)
    p.released("b", 11)
    return p


def test_parked_models_take_no_max_models_slot(fx: RecordingEffects) -> None:
    p = a_parked_for_b(fx)
    p.request(2, "a", GB, now=20)  # resuming a needs the one slot: b is parked for it
    assert fx.take() == [("park", "b"), ("load", "a", ()), ("grant", 2, "a")]


def test_a_parked_model_frees_no_slot_so_the_ready_one_is_parked_for_a_third(fx: RecordingEffects) -> None:
    """Seen as a new user (two catalog entries beside the default model, --max-models 1): the parked model was
    stopped as if it freed the one slot, and two models ended up loaded."""
    p = a_parked_for_b(fx)
    p.request(2, "c", GB, now=20, park_need=GB // 4)
    assert fx.take() == [("park", "b"), ("load", "c", ()), ("grant", 2, "c")]
    assert p.residents["a"].phase is InstanceState.PARKED  # memory was enough: it stays parked
    assert choose_victims([Candidate("parked", GB, 0.0, 0.0, parked=True), Candidate("ready", GB, 5.0, 0.0)],
                          need=GB, free=4 * GB, slots_free=0) == ["ready"]


def test_a_parked_measurement_replaces_its_parked_bytes(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=3 * GB)
    parkable(p, fx, "a", 2 * GB, GB // 2, now=0)
    p.request(1, "b", 2 * GB, now=10)
    fx.take()
    p.measured("a", GB // 4)  # a ready-instance measurement does not apply to a parked one
    assert p.residents["a"].bytes == GB // 2
    p.measured("a", GB // 4, parked=True)
    assert p.residents["a"].bytes == GB // 4 and p.residents["a"].park_bytes == GB // 4


# -- saved KV state -------------------------------------------------------------------------------------
def test_a_kept_kv_state_counts_in_the_parked_bytes_and_goes_back_on_resume(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=3 * GB)
    parkable(p, fx, "a", 2 * GB, GB // 2, now=0)
    p.request(1, "b", 2 * GB, now=10)
    assert fx.take()[0] == ("park", "a")
    p.state_kept("a", GB // 4)
    assert p.residents["a"].bytes == GB // 2 + GB // 4 and p.reserved == 2 * GB + 3 * GB // 4
    p.measured("a", GB // 2 + GB // 4 + 1, parked=True)  # the measurement includes the state
    assert p.residents["a"].park_bytes == GB // 2 + 1
    ready(p, "b", 11)
    p.released("b", 11)
    p.request(2, "a", 2 * GB, now=20)  # resumed: the state is in its new context, counted in its need
    assert fx.take() == [("load", "a", ("b",)), ("grant", 2, "a")]
    assert p.residents["a"].state_bytes == 0 and p.residents["a"].bytes == 2 * GB


def test_states_are_dropped_least_recently_used_first_when_that_makes_the_room(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=4 * GB)
    parkable(p, fx, "a", GB, GB // 4, now=0)
    parkable(p, fx, "b", GB, GB // 4, now=10)
    # Park both by hand, each with a state of half a GB (a used first).
    for name in ("a", "b"):
        p.residents[name].phase = InstanceState.PARKED
        p.residents[name].bytes = GB // 4
        p.state_kept(name, GB // 2)
    assert p.reserved == 3 * GB // 2
    p.request(1, "c", 3 * GB, now=20)  # 1/2 GB short: a's state (the older) is enough
    assert fx.take() == [("drop_state", "a"), ("load", "c", ()), ("grant", 1, "c")]
    assert p.residents["a"].phase is p.residents["b"].phase is InstanceState.PARKED
    assert p.residents["a"].state_bytes == 0 and p.residents["b"].state_bytes == GB // 2


def test_states_are_not_dropped_when_that_is_not_enough(fx: RecordingEffects) -> None:
    p = PoolPolicy(fx, budget=4 * GB)
    parkable(p, fx, "a", GB, GB // 4, now=0)
    p.residents["a"].phase, p.residents["a"].bytes = InstanceState.PARKED, GB // 4
    p.state_kept("a", GB // 4)
    p.request(1, "c", 4 * GB, now=20)  # needs everything: a goes whole, its state with it
    assert fx.take() == [("load", "c", ("a",)), ("grant", 1, "c")]
