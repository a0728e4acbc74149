"""A real worker process on the real default model: load, greedy generation, streaming, tokens,
cancel, crash by a real signal, exit on channel EOF, death with the supervisor."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from warren.errors import GrammarRejected, PromptTooLong, WarrenError, WorkerCrashed
from warren.params import FinishReason, GenerationParams
from warren.settings import ModelSettings
from warren.worker import protocol as p
from warren.worker.handle import WorkerHandle

GREEDY = dict(temperature=0.0, max_tokens=24)


@pytest.fixture
async def worker(model_path: Path) -> AsyncIterator[WorkerHandle]:
    handle = WorkerHandle(ModelSettings(name="smol", path=model_path, context_size=512))
    await handle.start()
    await handle.load()
    yield handle
    await handle.stop()


async def run(handle: WorkerHandle, params: GenerationParams, stream: bool) -> tuple[list[str], p.Done]:
    tokens: list[str] = []
    async for frame in handle.generate(params, stream):
        if isinstance(frame, p.Token):
            tokens.append(frame.text)
        else:
            return tokens, frame
    raise AssertionError("no Done frame")


async def test_load_reports_the_model(worker: WorkerHandle) -> None:
    info = worker.model_info
    assert info is not None and info.n_ctx == 512 and info.n_ctx_train == 8192 and info.n_vocab == 49152
    assert info.chat_template is not None and "<|im_start|>" in info.chat_template
    assert worker.progress == 1.0 and worker.load_seconds > 0


async def test_greedy_generation_is_deterministic_and_streams_the_same_text(worker: WorkerHandle) -> None:
    params = GenerationParams(prompt="The capital of France is", **GREEDY)
    _, first = await run(worker, params, stream=False)
    tokens, second = await run(worker, params, stream=True)
    assert first.text == second.text and len(first.text) > 10
    assert "".join(tokens) == second.text
    assert second.completion_tokens == 24 and second.finish_reason == FinishReason.LENGTH
    assert second.prompt_tokens == len(await worker.call(p.Tokenize, text="The capital of France is"))


async def test_stop_sequence_and_eos(worker: WorkerHandle) -> None:
    params = GenerationParams(prompt="The capital of France is", **GREEDY)
    _, full = await run(worker, params, stream=False)
    word = full.text.split()[2]
    _, stopped = await run(worker, GenerationParams(prompt=params.prompt, stop=(word,), **GREEDY), stream=False)
    assert stopped.finish_reason == FinishReason.STOP_SEQUENCE
    assert full.text.startswith(stopped.text) and word not in stopped.text
    chat = "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n"
    _, eos = await run(worker, GenerationParams(prompt=chat, temperature=0.0, max_tokens=200), stream=False)
    assert eos.finish_reason == FinishReason.STOP and eos.completion_tokens < 200


async def test_grammar_constrains_output(worker: WorkerHandle) -> None:
    params = GenerationParams(prompt="Is the sky blue? Answer:", grammar='root ::= " yes" | " no"', **GREEDY)
    _, done = await run(worker, params, stream=False)
    assert done.text in (" yes", " no")


@pytest.mark.parametrize(("params", "words"), [
    (dict(grammar="root ::= [z-a]"), "the grammar: the character range [z-a] is empty"),
    (dict(grammar="root ::= <[99999]>"), "outside this model's vocabulary [0, 49152)"),
    (dict(grammar="root ::= <|im_end|>"), "ends generation"),
    (dict(grammar="root ::= <|no such token|>"), "is not a single token of this model"),
    (dict(json_schema='{"type": "string", "maxLength": 10000000}'), "maxLength at / must be a whole number"),
    (dict(json_schema='{"type": "string", "pattern": "no anchors"}'), "cannot be turned into a grammar"),
    # A valid grammar whose only start this request bans: llama.cpp would abort on it (no static check sees it).
    (dict(grammar='root ::= "a"', banned_strings=("a",)), "allows no token to start with"),
])
async def test_the_worker_checks_every_grammar_before_llama_cpp(worker: WorkerHandle, params: dict[str, object],
                                                                words: str) -> None:
    """The supervisor checks grammars first; the worker checks them again with its vocabulary (and the
    grammars made from schemas), so a request that got past the supervisor still cannot crash it."""
    with pytest.raises(GrammarRejected, match=re.escape(words)):
        await run(worker, GenerationParams(prompt="x", **GREEDY, **params), stream=False)  # type: ignore[arg-type]
    _, done = await run(worker, GenerationParams(prompt="x", temperature=0.0, max_tokens=2), stream=False)
    assert worker.alive and done.completion_tokens == 2


async def test_a_grammar_at_a_dead_end_ends_the_generation(worker: WorkerHandle) -> None:
    """``root ::= "a"`` with ban_eos: after "a" only end-of-generation is allowed, and it is banned.
    llama.cpp aborts the process there ("Unexpected empty grammar stack"); warren stops cleanly."""
    params = GenerationParams(prompt="Say a letter:", grammar='root ::= "a"', ban_eos=True, temperature=0.0,
                              max_tokens=8)
    tokens, done = await run(worker, params, stream=True)
    assert done.text == "a" == "".join(tokens) and done.finish_reason == FinishReason.STOP
    assert worker.alive


async def test_sampling_with_a_grammar_is_seeded_like_without(worker: WorkerHandle) -> None:
    """Requests with a grammar sample in two steps; with a seed they are as repeatable as the one-call path."""
    params = GenerationParams(prompt="Pick some letters:", grammar="root ::= [a-z ]+", temperature=1.0, top_k=40,
                              top_p=0.9, seed=7, max_tokens=12)
    _, first = await run(worker, params, stream=False)
    _, second = await run(worker, params, stream=False)
    assert first.text == second.text and first.completion_tokens == 12
    assert set(first.text) <= set("abcdefghijklmnopqrstuvwxyz ")


async def test_tokenize_round_trip(worker: WorkerHandle) -> None:
    ids = await worker.call(p.Tokenize, text="Hello world", special=True)
    assert ids and all(isinstance(i, int) for i in ids)
    assert await worker.call(p.Detokenize, ids=ids) == "Hello world"


async def test_prompt_longer_than_the_context_is_refused(worker: WorkerHandle) -> None:
    with pytest.raises(PromptTooLong, match="context window is 512 tokens"):
        await run(worker, GenerationParams(prompt="word " * 600, **GREEDY), stream=False)
    # KoboldCpp's way: the oldest tokens go, the generation still gets its room.
    _, done = await run(worker, GenerationParams(prompt="word " * 600, truncate_prompt=True, **GREEDY), False)
    assert done.completion_tokens == 24 and done.prompt_tokens == 512 - 24


async def test_cancel_stops_generation_early(worker: WorkerHandle) -> None:
    abort = asyncio.Event()
    count = 0
    done = None
    async for frame in worker.generate(GenerationParams(prompt="Once upon a time", temperature=0.0,
                                                        max_tokens=500), True, abort):
        if isinstance(frame, p.Token):
            count += 1
            if count == 3:
                abort.set()
        else:
            done = frame
    assert done is not None and done.finish_reason == FinishReason.ABORT and done.completion_tokens < 100


async def test_a_paused_worker_waits_for_its_turn_then_goes_on_or_leaves_when_cancelled(worker: WorkerHandle) -> None:
    """A share of no threads (more generating workers than cores, ``warren/pool/compute.py``) holds the worker
    before its next decode step; its turn lets it go on, and a cancel while it waits ends it at once."""
    cores = tuple(sorted(os.sched_getaffinity(0)))
    frames: list[p.Frame] = []

    async def collect(abort: asyncio.Event) -> None:
        params = GenerationParams(prompt="Once upon a time", temperature=0.0, max_tokens=8)
        async for frame in worker.generate(params, True, abort):
            frames.append(frame)

    for turn_comes, expected in ((True, (FinishReason.LENGTH, 8)), (False, (FinishReason.ABORT, 0))):
        frames.clear()
        worker.set_threads(0, ())
        abort = asyncio.Event()
        task = asyncio.create_task(collect(abort))
        finished, _ = await asyncio.wait({task}, timeout=1.0)
        assert not finished and frames == []  # paused before the prompt's decode: nothing happens
        if turn_comes:
            worker.set_threads(len(cores), cores)
        else:
            abort.set()
        await asyncio.wait_for(task, 60)
        done = frames[-1]
        assert isinstance(done, p.Done)
        assert (done.finish_reason, done.completion_tokens) == expected


async def test_cancel_stops_a_long_prompt_between_batches(model_path: Path) -> None:
    """Issue 11 item 2: a Cancel (client gone, abort, a Park behind it) takes effect between prompt batches,
    not after the whole prompt is read: here 16-token batches of a ~300-token prompt."""
    handle = WorkerHandle(ModelSettings(name="smol", path=model_path, context_size=1024, batch_size=16))
    await handle.start()
    await handle.load()
    try:
        abort = asyncio.Event()
        abort.set()  # Cancel follows the Generate at once
        began = time.perf_counter()
        frames = [f async for f in handle.generate(GenerationParams(prompt="word " * 300, max_tokens=8), True, abort)]
        cancelled = time.perf_counter() - began
        done = frames[-1]
        assert isinstance(done, p.Done) and done.finish_reason == FinishReason.ABORT and done.completion_tokens == 0
        # The same amount of prompt, read to the end (other words, so no cached prefix helps).
        _, full = await run(handle, GenerationParams(prompt="other " * 300, max_tokens=1), stream=False)
        assert cancelled < full.prompt_seconds / 3, (cancelled, full.prompt_seconds)
    finally:
        await handle.stop()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT])
async def test_killed_mid_stream_gives_a_clear_error(model_path: Path, sig: signal.Signals) -> None:
    handle = WorkerHandle(ModelSettings(name="smol", path=model_path, context_size=1024))
    await handle.start()
    await handle.load()
    with pytest.raises(WorkerCrashed) as info:
        async for frame in handle.generate(GenerationParams(prompt="Once", temperature=0.0, max_tokens=400), True):
            if isinstance(frame, p.Token):
                os.kill(handle.pid, sig)
    assert f"model 'smol' crashed: killed by {sig.name}" in info.value.message
    assert not psutil.pid_exists(handle.pid) or psutil.Process(handle.pid).status() == psutil.STATUS_ZOMBIE
    await handle.stop()


async def test_closing_the_channel_ends_the_worker(worker: WorkerHandle) -> None:
    pid = worker.pid
    started = time.monotonic()
    await worker.stop()
    assert not psutil.pid_exists(pid)
    assert time.monotonic() - started < 2.0  # EOF, not the SIGTERM/SIGKILL escalation


def rss(pid: int) -> int:
    """Resident bytes (not PSS: another process mapping the same model file would change PSS)."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("Rss:"))


async def test_park_gives_back_the_context_and_weights_and_resume_generates_the_same(model_path: Path) -> None:
    handle = WorkerHandle(ModelSettings(name="smol", path=model_path, context_size=2048), heartbeat=False)
    await handle.start()
    try:
        await handle.load(prefault_bytes=48 << 20)
        params = GenerationParams(prompt="The capital of France is", **GREEDY)
        _, before = await run(handle, params, stream=False)
        loaded = rss(handle.pid)
        await handle.park()
        parked = rss(handle.pid)
        # The KV cache (45 MiB at 2048 tokens) and the weights' pages (92 MiB) are gone from the process.
        assert loaded - parked > 100 << 20, (loaded >> 20, parked >> 20)
        with pytest.raises(WarrenError):  # nothing to generate with while parked
            await run(handle, params, stream=False)
        await handle.load()  # resume: the same worker, a new context
        _, after = await run(handle, params, stream=False)
        assert after.text == before.text
        assert abs(rss(handle.pid) - loaded) < 8 << 20
    finally:
        await handle.stop()


async def test_a_worker_never_loads_a_second_model(worker: WorkerHandle, model_path: Path) -> None:
    worker.settings = ModelSettings(name="other", path=model_path, context_size=512, use_mmap=False)
    with pytest.raises(WarrenError, match="one model"):
        await worker.load()
