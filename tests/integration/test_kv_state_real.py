"""A conversation's KV state kept across parking, on the real default model (issue 14): restored into the
next context, it gives the same greedy text as the cache that was never parked, and only the new part of the
prompt is decoded."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from warren.errors import WarrenError
from warren.params import GenerationParams
from warren.settings import ModelSettings
from warren.worker import protocol as p
from warren.worker.handle import WorkerHandle

STORY = ("Once upon a time, in a small village by the sea, there lived an old fisherman named Tomas. Every "
         "morning he rowed out before dawn and came back with the tide. ") * 12


async def run(handle: WorkerHandle, params: GenerationParams) -> p.Done:
    async for frame in handle.generate(params, False):
        if isinstance(frame, p.Done):
            return frame
    raise AssertionError("no Done frame")


@pytest.fixture
async def worker(model_path: Path) -> AsyncIterator[WorkerHandle]:
    handle = WorkerHandle(ModelSettings(name="smol", path=model_path, context_size=2048), heartbeat=False)
    await handle.start()
    await handle.load()
    yield handle
    await handle.stop()


def greedy(prompt: str) -> GenerationParams:
    return GenerationParams(prompt=prompt, temperature=0.0, max_tokens=24)


async def test_a_parked_conversation_comes_back_with_its_cache_and_the_same_greedy_text(worker: WorkerHandle) -> None:
    first = await run(worker, greedy(STORY))
    turn = STORY + first.text + " The next day,"
    plain = await run(worker, greedy(turn))  # no swap: the cache of the first turn is reused
    assert plain.cached_tokens > 0.9 * first.prompt_tokens
    await run(worker, greedy(STORY))  # back to the first turn's cache: what the park will keep
    kept = await worker.park()
    assert kept > 1 << 20  # ~300 tokens x 23 KiB of K/V a token for this model
    await worker.load()
    swapped = await run(worker, greedy(turn))
    assert swapped.text == plain.text
    assert swapped.cached_tokens == plain.cached_tokens  # the prefix came back: only the new part was decoded


async def test_a_state_too_large_for_the_room_given_is_not_kept(worker: WorkerHandle) -> None:
    await run(worker, greedy(STORY))
    assert await worker.park(keep_state_bytes=1 << 16) == 0
    await worker.load()
    again = await run(worker, greedy(STORY))
    assert again.cached_tokens == 0


async def test_a_dropped_state_is_not_restored(worker: WorkerHandle) -> None:
    await run(worker, greedy(STORY))
    assert await worker.park() > 0
    await worker.drop_state()
    await worker.load()
    again = await run(worker, greedy(STORY))
    assert again.cached_tokens == 0


async def test_a_state_from_another_context_shape_is_not_restored(worker: WorkerHandle, model_path: Path) -> None:
    before = await run(worker, greedy(STORY))
    assert await worker.park() > 0
    worker.settings = ModelSettings(name="smol", path=model_path, context_size=1024)  # same model, smaller cache
    await worker.load()
    again = await run(worker, greedy(STORY))
    assert again.cached_tokens == 0 and again.text == before.text


async def test_parallel_sequences_are_not_kept(model_path: Path) -> None:
    """With --parallelrequests the sequences share one unified cache; a sequence put back there gave other
    greedy text (seen on this model), so none is kept: the next load decodes as before."""
    handle = WorkerHandle(ModelSettings(name="smol", path=model_path, context_size=1024, parallel=2),
                          heartbeat=False)
    await handle.start()
    try:
        await handle.load()
        await run(handle, greedy(STORY))
        assert await handle.park() == 0
    finally:
        await handle.stop()



def rss(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Rss:"))


async def test_a_worker_parked_with_its_context_resumes_it_with_the_same_cache_and_greedy_text(
        worker: WorkerHandle) -> None:
    """The pool's first choice when its budget has room: the context stays whole (~45 MiB of KV cache at 2,048
    tokens), nothing is copied out or back, and the next turn finds its whole prefix in the cache."""
    first = await run(worker, greedy(STORY))
    turn = STORY + first.text + " The next day,"
    plain = await run(worker, greedy(turn))
    await run(worker, greedy(STORY))
    loaded = rss(worker.pid)
    kept = await worker.park(keep_context=True)
    assert worker.parked_context and kept > 40 << 20  # the context's memory, which the pool counts
    assert loaded - rss(worker.pid) > 60 << 20  # the weights' pages went back all the same
    with pytest.raises(WarrenError, match="parked"):  # kept, not served: the pool gave its cores to another
        await run(worker, greedy(STORY))
    info = await worker.load()
    assert info.extra["kv_state"]["from"] == "context"
    assert info.extra["kv_state"]["tokens"] >= first.prompt_tokens
    swapped = await run(worker, greedy(turn))
    assert swapped.text == plain.text
    assert swapped.cached_tokens == plain.cached_tokens


async def test_a_context_larger_than_the_room_given_is_freed_and_its_state_kept(worker: WorkerHandle) -> None:
    await run(worker, greedy(STORY))
    kept = await worker.park(keep_state_bytes=20 << 20, keep_context=True)  # the context takes ~45 MiB
    assert not worker.parked_context and 1 << 20 < kept <= 20 << 20
    await worker.load()
    again = await run(worker, greedy(STORY))
    assert again.cached_tokens == again.prompt_tokens - 1


async def test_dropping_a_kept_context_gives_its_memory_back(worker: WorkerHandle) -> None:
    await run(worker, greedy(STORY))
    await worker.park(keep_context=True)
    parked = rss(worker.pid)
    await worker.drop_state()
    assert parked - rss(worker.pid) > 30 << 20
    info = await worker.load()
    assert "kv_state" not in info.extra
    again = await run(worker, greedy(STORY))
    assert again.cached_tokens == 0


async def test_a_kept_context_of_another_shape_is_replaced(worker: WorkerHandle, model_path: Path) -> None:
    before = await run(worker, greedy(STORY))
    await worker.park(keep_context=True)
    worker.settings = ModelSettings(name="smol", path=model_path, context_size=1024)
    info = await worker.load()
    assert info.n_ctx == 1024
    again = await run(worker, greedy(STORY))
    assert again.cached_tokens == 0 and again.text == before.text


async def test_a_kept_context_counts_its_kv_cache_also_when_the_load_prefaulted_it(model_path: Path) -> None:
    """The pool's loads fault the KV cache's memory in beforehand (``warren/worker/prefault.py``): that block
    is the context's too, and the bytes the park reports must hold it (seen: 13.8 MiB reported for a
    4,096-token context)."""
    handle = WorkerHandle(ModelSettings(name="smol", path=model_path, context_size=2048), heartbeat=False)
    await handle.start()
    try:
        await handle.load(prefault_bytes=45 << 20)
        await run(handle, greedy(STORY))
        kept = await handle.park(keep_context=True)
        assert handle.parked_context and kept > 40 << 20
    finally:
        await handle.stop()
