"""ContextShift on the real default model (issue 14): a prompt that keeps the memory and drops the oldest
story text shifts the cache, so only the new tokens are decoded; ``--noshift`` decodes from the cut again;
KoboldCpp's own truncation keeps the memory and cuts the oldest story text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from warren.params import GenerationParams
from warren.settings import ModelSettings
from warren.worker import protocol as p
from warren.worker.handle import WorkerHandle

MEMORY = "[Memory: Tomas is an old fisherman. His daughter Ana keeps the lighthouse.]\n"
LINES = [f"On day {i} Tomas rowed out to the {['north', 'south', 'east', 'west'][i % 4]} reef and caught "
         f"{i + 2} silver fish before the tide turned." for i in range(1, 13)]


async def run(handle: WorkerHandle, params: GenerationParams) -> p.Done:
    async for frame in handle.generate(params, False):
        if isinstance(frame, p.Done):
            return frame
    raise AssertionError("no Done frame")


async def worker_for(model_path: Path, **settings: object) -> WorkerHandle:
    handle = WorkerHandle(ModelSettings(name="smol", path=model_path, context_size=1024, **settings),  # type: ignore[arg-type]
                          heartbeat=False)
    await handle.start()
    await handle.load()
    return handle


@pytest.fixture
async def shifting(model_path: Path) -> AsyncIterator[WorkerHandle]:
    handle = await worker_for(model_path)
    yield handle
    await handle.stop()


def story(first: int, last: int) -> str:
    return MEMORY + " ".join(LINES[first:last])


def greedy(prompt: str, **kw: object) -> GenerationParams:
    return GenerationParams(prompt=prompt, temperature=0.0, max_tokens=8, **kw)  # type: ignore[arg-type]


async def count(handle: WorkerHandle, text: str) -> int:
    return len(await handle.call(p.Tokenize, text=text))


async def test_a_trimmed_prompt_shifts_the_cache_and_decodes_only_the_new_tokens(shifting: WorkerHandle) -> None:
    await run(shifting, greedy(story(0, 8)))
    trimmed = await run(shifting, greedy(story(3, 10)))  # lines 0-2 dropped, 8-9 new
    new = await count(shifting, " " + " ".join(LINES[8:10]))
    decoded = trimmed.prompt_tokens - trimmed.cached_tokens
    assert trimmed.cached_tokens > await count(shifting, MEMORY) + 100  # the memory and lines 3-7 were kept
    # At most the new lines are decoded (give or take a token at the seam; fewer when the first turn's greedy
    # output already began the next line, which the cache holds too).
    assert 0 < decoded <= new + 2, (decoded, new)


async def test_batched_sequences_shift_too(model_path: Path) -> None:
    """--parallelrequests: the trimmed story is shifted in its own sequence of the shared cache."""
    handle = await worker_for(model_path, parallel=2)
    try:
        await run(handle, greedy(story(0, 8)))
        trimmed = await run(handle, greedy(story(3, 10)))
        new = await count(handle, " " + " ".join(LINES[8:10]))
        assert trimmed.cached_tokens > await count(handle, MEMORY) + 100
        assert 0 < trimmed.prompt_tokens - trimmed.cached_tokens <= new + 2
    finally:
        await handle.stop()


async def test_without_context_shift_the_trimmed_prompt_is_decoded_from_the_cut(model_path: Path) -> None:
    handle = await worker_for(model_path, context_shift=False)
    try:
        await run(handle, greedy(story(0, 8)))
        trimmed = await run(handle, greedy(story(3, 10)))
        # Only the memory (and the words every line starts with, "On day") was shared: the rest is decoded again.
        assert trimmed.cached_tokens <= await count(handle, MEMORY) + 6
        assert trimmed.prompt_tokens - trimmed.cached_tokens > 150
    finally:
        await handle.stop()


async def test_a_shifted_cache_still_generates_sensible_text_and_continues_to_extend(shifting: WorkerHandle) -> None:
    await run(shifting, greedy(story(0, 8)))
    await run(shifting, greedy(story(3, 10)))
    extended = await run(shifting, greedy(story(3, 11)))  # the next turn only adds: a plain prefix reuse
    assert extended.prompt_tokens - extended.cached_tokens <= await count(shifting, " " + LINES[10]) + 2
    assert extended.completion_tokens > 0 and extended.text.strip()


async def test_koboldcpp_truncation_keeps_the_memory_and_cuts_the_oldest_story(shifting: WorkerHandle) -> None:
    long_story = MEMORY + " ".join(LINES * 4)  # ~1,200 tokens: over the 1024-token window
    params = GenerationParams(prompt=long_story, temperature=0.0, max_tokens=4, truncate_prompt=True,
                              keep_text=MEMORY)
    first = await run(shifting, params)
    assert first.prompt_tokens < await count(shifting, long_story)
    memory_tokens = await count(shifting, MEMORY)
    # The kept prompt starts with the memory: a prompt of the memory alone finds all of it in the cache.
    alone = await run(shifting, greedy(MEMORY + "Ana"))
    assert alone.cached_tokens >= memory_tokens - 1
