"""The cores shared among generating workers: the assignment as a table, the turn-taking as transcripts."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from warren.pool.compute import ComputeShares, Share, assign, usable_cores


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


async def test_shares_follow_who_generates_and_the_third_waits_its_turn() -> None:
    compute = ComputeShares([0, 1])
    told: list[tuple[str, Share]] = []

    def tell(name: str):  # type: ignore[no-untyped-def]
        return lambda share: told.append((name, share))

    a = compute.running_on("a", 2, tell("a"))
    assert await a.__aenter__() == Share(2, (0, 1))  # alone: both cores
    b = compute.running_on("b", 2, tell("b"))
    assert await b.__aenter__() == Share(1, (1,))
    assert told == [("a", Share(2, (0, 1))), ("a", Share(1, (0,))), ("b", Share(1, (1,)))]
    third = asyncio.ensure_future(compute.running_on("c", 2, tell("c")).__aenter__())
    await asyncio.sleep(0)
    assert not third.done()  # two cores, two generating workers: the third waits
    told.clear()
    await a.__aexit__(None, None, None)
    assert await third == Share(1, (1,))
    assert told == [("b", Share(2, (0, 1))), ("b", Share(1, (0,))), ("c", Share(1, (1,)))]
    assert compute.running == {"b": 2, "c": 2}
