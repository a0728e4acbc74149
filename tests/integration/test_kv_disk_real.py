"""The disk tier of KV state on the real default model (issue 14): a worker writes its conversation's state
before it is stopped (``SaveState``), and a new worker for the same model and settings reads it back — the same
greedy text as the cache that was never lost, with the prompt's prefix found in the cache. A corrupt file, or
one made for other settings, is refused and the prompt is decoded as usual."""

from __future__ import annotations

from pathlib import Path

from tests.integration.test_kv_state_real import STORY, greedy, run
from warren.settings import ModelSettings
from warren.worker import kvfile
from warren.worker.handle import WorkerHandle


async def worker(model_path: Path, folder: Path, context_size: int = 2048) -> WorkerHandle:
    handle = WorkerHandle(ModelSettings(name="smol", path=model_path, context_size=context_size), heartbeat=False)
    handle.disk_tier = (str(folder), 256 * 2**20)
    await handle.start()
    await handle.load()
    return handle


async def stopped_after_a_conversation(model_path: Path, folder: Path) -> tuple[str, int, int, str]:
    """(turn, plain cached tokens, bytes written, plain text): the next turn without a stop, then the cache
    back at the first turn, written to ``folder``, and the worker stopped."""
    first_worker = await worker(model_path, folder)
    try:
        first = await run(first_worker, greedy(STORY))
        turn = STORY + first.text + " The next day,"
        plain = await run(first_worker, greedy(turn))
        await run(first_worker, greedy(STORY))
        written = await first_worker.save_state(30.0)
    finally:
        await first_worker.stop()
    return turn, plain.cached_tokens, written, plain.text


async def test_a_stopped_workers_conversation_comes_back_from_disk(model_path: Path, tmp_path: Path) -> None:
    turn, cached, written, text = await stopped_after_a_conversation(model_path, tmp_path)
    assert written > 1 << 20 and kvfile.usage(tmp_path) == (1, written)
    second = await worker(model_path, tmp_path)
    try:
        assert second.model_info is not None and second.model_info.extra["kv_state"]["from"] == "disk"
        again = await run(second, greedy(turn))
    finally:
        await second.stop()
    assert again.text == text
    assert again.cached_tokens == cached > 0


async def test_a_corrupt_file_is_refused(model_path: Path, tmp_path: Path) -> None:
    turn, _, written, text = await stopped_after_a_conversation(model_path, tmp_path)
    (path,) = tmp_path.glob("*" + kvfile.SUFFIX)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # one bit pattern in the K/V cells: would load, and change the output
    path.write_bytes(bytes(raw))
    second = await worker(model_path, tmp_path)
    try:
        assert second.model_info is not None
        assert "checksum mismatch" in second.model_info.extra["kv_state"]["refused"]
        again = await run(second, greedy(turn))
    finally:
        await second.stop()
    assert again.cached_tokens == 0 and again.text == text
    assert not path.exists()


async def test_a_file_for_other_settings_is_not_read(model_path: Path, tmp_path: Path) -> None:
    turn, _, _, text = await stopped_after_a_conversation(model_path, tmp_path)
    other = await worker(model_path, tmp_path, context_size=1024)  # same model, another cache shape
    try:
        assert other.model_info is not None and "kv_state" not in other.model_info.extra
        again = await run(other, greedy(turn))
    finally:
        await other.stop()
    assert again.cached_tokens == 0 and again.text == text
