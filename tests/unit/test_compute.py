"""The cores shared among generating workers: the assignment as a table, the turn-taking as transcripts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from warren.pool.compute import PAUSED, ComputeShares, Share, assign, usable_cores


@pytest.mark.parametrize(("cores", "ceilings", "expected"), [
    ([0, 1], {"a": 2}, {"a": Share(2, (0, 1))}),  # alone: every core
    ([0, 1], {"a": 2, "b": 2}, {"a": Share(1, (0,)), "b": Share(1, (1,))}),  # two: one each, disjoint
    ([0, 1, 2, 3], {"a": 8, "b": 8, "c": 8}, {"a": Share(2, (0, 1)), "b": Share(1, (2,)), "c": Share(1, (3,))}),
    ([0, 1, 2, 3], {"a": 1, "b": 8}, {"a": Share(1, (0,)), "b": Share(3, (1, 2, 3))}),  # a's ceiling leaves 3
    ([0, 1, 2, 3], {"a": 1}, {"a": Share(1, (0,))}),  # --threads 1 is a ceiling, not a floor
])
def test_assign_divides_the_cores_under_each_ceiling(cores: list[int], ceilings: dict[str, int],
                                                     expected: dict[str, Share]) -> None:
    shares = assign(cores, ceilings)
    assert shares == expected
    used = [c for s in shares.values() for c in s.cores]
    assert len(used) == len(set(used)) <= len(cores)  # never more threads than cores, never a core twice


def test_usable_cores_follow_the_cgroup_quota(tmp_path: Path) -> None:
    limit = tmp_path / "cpu.max"
    limit.write_text("max 100000\n")
    everything = usable_cores(limit)
    limit.write_text("100000 100000\n")
    assert usable_cores(limit) == everything[:1]
    limit.write_text("50000 100000\n")  # half a CPU: still one thread
    assert usable_cores(limit) == everything[:1]


async def test_shares_follow_who_generates_and_more_workers_than_cores_take_turns() -> None:
    compute = ComputeShares([0, 1], quantum=0.01)
    told: list[tuple[str, Share]] = []
    turn_passed = asyncio.Event()

    def tell(name: str):  # type: ignore[no-untyped-def]
        def record(share: Share) -> None:
            told.append((name, share))
            if name == "a" and share == PAUSED:
                turn_passed.set()
        return record

    a = compute.running_on("a", 2, tell("a"))
    assert await a.__aenter__() == Share(2, (0, 1))  # alone: both cores
    b = compute.running_on("b", 2, tell("b"))
    assert await b.__aenter__() == Share(1, (1,))
    assert told == [("a", Share(2, (0, 1))), ("a", Share(1, (0,))), ("b", Share(1, (1,)))]
    told.clear()
    c = compute.running_on("c", 2, tell("c"))
    assert await c.__aenter__() == PAUSED  # two cores, two generating workers: the third waits its turn
    assert told == [("c", PAUSED)]
    told.clear()
    await turn_passed.wait()  # a quantum later, the turn passes: a to the back, c runs
    assert told == [("a", PAUSED), ("b", Share(1, (0,))), ("c", Share(1, (1,)))]
    assert list(compute.running) == ["b", "c", "a"]
    told.clear()
    await b.__aexit__(None, None, None)  # two left on two cores: no more turns
    assert told == [("c", Share(1, (0,))), ("a", Share(1, (1,)))]
    assert compute._turn is None
    await c.__aexit__(None, None, None)
    await a.__aexit__(None, None, None)
    assert compute.running == {} and compute.shares == {}


@pytest.mark.parametrize(("cores", "workers"), [([0, 1], 3), ([0], 2), ([0, 1, 2, 3], 9)])
def test_more_workers_than_cores_never_run_more_threads_than_cores(cores: list[int], workers: int) -> None:
    shares = assign(cores, {f"w{i}": 8 for i in range(workers)})
    running = [s for s in shares.values() if s.threads]
    assert len(running) == len(cores) and all(s.threads == 1 for s in running)
    assert sorted(c for s in running for c in s.cores) == cores
    assert list(shares.values())[len(cores):] == [PAUSED] * (workers - len(cores))  # the later ones wait
