"""Several requests at once on one model (``--parallelrequests N``): N sequences in one llama.cpp context,
one ``llama_decode`` per step for all of them (continuous batching).

Why: on a CPU, decoding one token for four sequences costs far less than four one-token decodes (the
weights are read once per step, not once per sequence), so four users on one model get ~1.3x the tokens/s of
one, instead of queueing behind each other (``docs/benchmarks.md``). The cache is llama.cpp's unified KV
cache sized by ``--contextsize``: the sequences share its cells, so the memory is that of one context.

How a step is built (``BatchRunner.step``):

- every sequence that is generating puts its last sampled token in the batch (its logits are wanted);
- sequences still reading their prompt add a chunk of it. A long prompt arriving must not freeze the
  streams already running, so while any sequence is generating the chunk is sized to keep the step within
  ``STEP_STRETCH`` times a decode-only step, from running averages of both costs; with nobody generating it
  is a full batch.
- after ``llama_decode``, each sequence whose logits are there samples its token with its own sampler chain
  (its own grammar, penalties, seed), feeds its own stop matcher, and ends on its own (EOS, stop string,
  length, cancel) with its own ``Done``.

Each slot (sequence id) keeps the tokens whose K/V it holds, so a request that continues an earlier one
(chat turns, stories) takes the slot with the longest shared prefix and decodes only the rest — what the
single-sequence cache does for one user; a story trimmed at full context is shifted in its own sequence
(ContextShift, ``warren/worker/shift.py``), the others' cells untouched.
"""

from __future__ import annotations

import codecs
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import llama_cpp as L

from warren.errors import Busy, InvalidRequest, WarrenError
from warren.params import FinishReason, GenerationParams, GenerationResult, TokenLogprob
from warren.worker.logprobs import LogprobReader
from warren.worker.shift import dropped_span, shared_prefix, shift
from warren.worker.stops import StopMatcher

# A step that prefills may take this many times a decode-only step. The target is 3x at most for the longest
# gap; single steps here run 2-3x the usual length now and then whatever the batch (a thread of the two
# preempted: the supervisor and the clients share the cores), so the usual step keeps that much room.
# Measured on the default model, three streams and a 2,000-token prompt: 2.0 gave a median gap of 2.1-2.4x
# and 12-59 steps over 3x; 1.5 gives 1.5-1.8x and 2-4 (docs/benchmarks.md), and the prompt is read no slower.
STEP_STRETCH = 1.5
MIN_CHUNK = 2  # prompt tokens a prefilling sequence adds at least per step (~3 ms each, ~6 at 2,000 of depth)
FIRST_CHUNK = 4  # ... and in its first step beside running streams, before the cost of a prompt token is known


@dataclass(eq=False)
class Running:
    """One request in its slot: the prompt still to read, its sampler and stop strings, what it made."""

    request_id: int
    params: GenerationParams
    tokens: list[int]  # the prompt
    emit: Callable[[str], None] | None
    cancelled: Callable[[], bool]
    finish: Callable[[GenerationResult | WarrenError], None]
    sampler: Any
    seed: int
    max_new: int
    read: int = 0  # prompt tokens in the cache so far
    reused: int = 0  # of which found in the cache at admission (not decoded)
    pending: int | None = None  # the token sampled last, to be decoded next step
    n_new: int = 0
    stops: StopMatcher = field(default_factory=lambda: StopMatcher(()))
    utf8: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    started: float = field(default_factory=time.perf_counter)
    prompt_done: float = 0.0
    reader: LogprobReader | None = None  # when the request asked for logprobs
    logprobs: list[TokenLogprob] = field(default_factory=list)


@dataclass(eq=False)
class Slot:
    seq_id: int
    cached: list[int] = field(default_factory=list)  # tokens whose K/V this sequence holds, in order
    running: Running | None = None


class BatchRunner:
    """The sequences of one context, stepped together. Driven by the worker's main thread only."""

    def __init__(self, engine: Any, n_slots: int) -> None:
        self.engine = engine
        self.slots = [Slot(i) for i in range(n_slots)]
        self.capacity = max(engine.n_batch, n_slots)
        self.batch = L.llama_batch_init(self.capacity, 0, 1)
        self.decode_step = 0.0  # running average of a decode-only step, seconds
        self.per_prompt_token = 0.0  # running average cost of one prompt token in a step, seconds
        self.chunk = FIRST_CHUNK  # prompt tokens read in the last step beside running streams

    def close(self) -> None:
        self.fail_all(WarrenError("the worker is shutting this context down"))
        L.llama_batch_free(self.batch)

    def fail_all(self, error: WarrenError) -> None:
        """End every running request with ``error``; the slots forget what they held (it may be half written)."""
        memory = L.llama_get_memory(self.engine.ctx) if self.engine.ctx is not None else None
        for slot in self.slots:
            if slot.running is not None:
                self._end(slot, error)
            slot.cached = []
            if memory is not None:
                L.llama_memory_seq_rm(memory, slot.seq_id, -1, -1)

    @property
    def active(self) -> bool:
        return any(s.running is not None for s in self.slots)

    @property
    def free(self) -> bool:
        return any(s.running is None for s in self.slots)

    def clear(self) -> None:
        """The context was replaced or freed (park): no slot holds anything any more."""
        for slot in self.slots:
            slot.cached = []

    # -- admission --------------------------------------------------------------------------------------
    def admit(self, request_id: int, params: GenerationParams, emit: Callable[[str], None] | None,
              cancelled: Callable[[], bool], finish: Callable[[GenerationResult | WarrenError], None]) -> None:
        """Start a request in the free slot that shares the longest prefix with its prompt. ``finish`` gets
        its result (or error) when it ends. Raises what the request got wrong (prompt too long, grammar)."""
        engine = self.engine
        tokens = engine._prepare_prompt(params)
        phrase = next((s for s in params.banned_strings if len(engine.tokenize(s, special=False)) > 1), None)
        if phrase is not None:  # backing up one sequence of a shared batch is not done (docs/api-compat.md)
            raise InvalidRequest(f"banned string {phrase!r} is several tokens long: with --parallelrequests above 1 "
                                 "only banned strings of one token are supported", param="banned_strings")
        free = [s for s in self.slots if s.running is None]
        if not free:
            raise Busy("every sequence of this model is in use")
        slot = max(free, key=lambda s: shared_prefix(s.cached, tokens))
        if engine.context_shift and (span := dropped_span(slot.cached, tokens)) is not None:
            shifted = shift(engine.ctx, slot.seq_id, slot.cached, span)  # ContextShift, in this sequence alone
            if shifted is not None:
                slot.cached = shifted
        n_keep = min(shared_prefix(slot.cached, tokens), len(tokens) - 1)
        memory = L.llama_get_memory(engine.ctx)
        if not L.llama_memory_seq_rm(memory, slot.seq_id, n_keep, -1):
            L.llama_memory_seq_rm(memory, slot.seq_id, -1, -1)
            n_keep = 0
        slot.cached = slot.cached[:n_keep]
        seed = params.seed if params.seed >= 0 else random.getrandbits(31)
        sampler = engine._sampler(params, seed, tokens)
        window = min(params.context_limit or engine.n_ctx, engine.n_ctx)
        slot.running = Running(request_id, params, tokens, emit, cancelled, finish, sampler, seed,
                               max_new=min(params.max_tokens, window - len(tokens)), read=n_keep, reused=n_keep,
                               stops=StopMatcher(params.stop, params.trim_stop),
                               reader=LogprobReader(engine.ctx, L.llama_vocab_n_tokens(engine.vocab),
                                                    params.top_logprobs, engine._piece) if params.logprobs else None)

    # -- one step -----------------------------------------------------------------------------------------
    def step(self) -> None:
        engine, batch = self.engine, self.batch
        for slot in self.slots:  # cancelled requests leave before the step
            r = slot.running
            if r is not None and r.cancelled():
                self._end(slot, self._result(r, FinishReason.ABORT))
        decoding = [s for s in self.slots if s.running is not None and s.running.pending is not None]
        reading = [s for s in self.slots if s.running is not None and s.running.pending is None]
        if not decoding and not reading:
            return
        if not engine._apply_threads(lambda: any(s.running is not None and s.running.cancelled() for s in self.slots)):
            return  # cancelled while paused for its turn of the cores: it leaves at the next step
        before = {slot: (len(slot.cached), slot.running.read) for slot in decoding + reading if slot.running}
        n = 0
        wants: list[tuple[Slot, int]] = []  # (slot, batch index of the token whose logits it samples)
        for slot in decoding:
            r = slot.running
            assert r is not None and r.pending is not None
            self._add(n, r.pending, len(slot.cached), slot.seq_id, True)
            wants.append((slot, n))
            slot.cached.append(r.pending)
            n += 1
        budget = self.capacity - n
        if decoding:  # keep the running streams flowing: a small first chunk, then what the costs allow
            fits = FIRST_CHUNK if self.per_prompt_token == 0 or self.decode_step == 0 else \
                max(MIN_CHUNK, int(self.decode_step * (STEP_STRETCH - 1) / self.per_prompt_token))
            budget = min(budget, fits, 2 * self.chunk)  # growing at most twofold a step: one noisy step is no guide
        prompt_tokens = 0
        for slot in reading:
            r = slot.running
            assert r is not None
            take = min(budget - prompt_tokens, len(r.tokens) - r.read)
            if take <= 0:
                break
            for i in range(take):
                token = r.tokens[r.read + i]
                last = r.read + i == len(r.tokens) - 1
                self._add(n, token, len(slot.cached), slot.seq_id, last)
                if last:
                    wants.append((slot, n))
                slot.cached.append(token)
                n += 1
            r.read += take
            prompt_tokens += take
        batch.n_tokens = n
        if decoding and prompt_tokens:
            self.chunk = prompt_tokens
        began = time.perf_counter()
        rc = L.llama_decode(engine.ctx, batch)
        seconds = time.perf_counter() - began
        if rc != 0:
            self._decode_failed(rc, before)
            return
        self._learn(seconds, len(decoding), prompt_tokens)
        for slot, index in wants:
            self._sample(slot, index)

    def _add(self, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        b = self.batch
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq_id
        b.logits[i] = logits

    def _learn(self, seconds: float, n_decoding: int, prompt_tokens: int) -> None:
        """Running averages: a decode-only step, and what each prompt token adds to a step."""
        if prompt_tokens == 0:
            self.decode_step = seconds if self.decode_step == 0 else 0.8 * self.decode_step + 0.2 * seconds
        elif n_decoding and self.decode_step > 0:
            extra = max(seconds - self.decode_step, 0.0) / prompt_tokens
            self.per_prompt_token = extra if self.per_prompt_token == 0 else 0.8 * self.per_prompt_token + 0.2 * extra
        elif self.per_prompt_token == 0:
            self.per_prompt_token = seconds / prompt_tokens

    def _sample(self, slot: Slot, index: int) -> None:
        r = slot.running
        assert r is not None
        engine = self.engine
        if r.prompt_done == 0.0:
            r.prompt_done = time.perf_counter()
        if r.reader is not None:
            r.reader.read(index)
        try:
            token = engine._sample_at(r.sampler, index, r.n_new)
        except WarrenError as exc:
            self._end(slot, exc)
            return
        if token is None:  # a grammar at its end: nothing more can follow
            self._end(slot, self._result(r, FinishReason.STOP))
            return
        if L.llama_vocab_is_eog(engine.vocab, token) and not r.params.bypass_eos:
            self._end(slot, self._result(r, FinishReason.STOP))
            return
        r.n_new += 1
        if r.reader is not None:
            r.logprobs.append(r.reader.entry(token))
        shown = r.stops.feed(r.utf8.decode(engine._piece(token, r.params.render_special)))
        if shown and r.emit is not None:
            r.emit(shown)
        if r.stops.stopped:
            self._end(slot, self._result(r, FinishReason.STOP_SEQUENCE))
        elif r.n_new >= r.max_new:
            self._end(slot, self._result(r, FinishReason.LENGTH))
        else:
            r.pending = token

    def _result(self, r: Running, reason: FinishReason) -> GenerationResult:
        tail = r.stops.feed(r.utf8.decode(b"", True)) + r.stops.flush()
        if tail and r.emit is not None:
            r.emit(tail)
        now = time.perf_counter()
        prompt_done = r.prompt_done or now
        return GenerationResult(text=r.stops.text, finish_reason=reason, prompt_tokens=len(r.tokens),
                                completion_tokens=r.n_new, prompt_seconds=prompt_done - r.started,
                                generation_seconds=now - prompt_done, seed=r.seed, cached_tokens=r.reused,
                                logprobs=tuple(r.logprobs))

    def _end(self, slot: Slot, outcome: GenerationResult | WarrenError) -> None:
        r = slot.running
        assert r is not None
        slot.running = None
        self.engine._free_sampler(r.sampler)
        r.finish(outcome)

    def _decode_failed(self, rc: int, before: dict[Slot, tuple[int, int]]) -> None:
        """No room in the shared cache (rc 1) or a failed decode: what this step added is taken back, and the
        sequence that started last ends (the others go on, and try again next step); anything else ends
        every sequence of the step."""
        memory = L.llama_get_memory(self.engine.ctx)
        for slot, (cached, read) in before.items():
            slot.cached = slot.cached[:cached]
            L.llama_memory_seq_rm(memory, slot.seq_id, cached, -1)
            if slot.running is not None:
                slot.running.read = read
        if rc == 1:
            newest = max(before, key=lambda s: s.running.started if s.running else 0.0)
            self._end(newest, Busy("the context is full: the requests this model serves at once share its "
                                   f"{self.engine.n_ctx} tokens", retry_after=2))
            return
        for slot in before:
            if slot.running is not None:
                self._end(slot, WarrenError(f"llama_decode failed (code {rc})"))
