"""KoboldCpp's genkey: a client polls the partial text of its own generation and can abort it.

KoboldAI Lite sends a ``genkey`` with each generation, then calls ``/api/extra/generate/check`` with it
to show text while a non-streamed request runs, and ``/api/extra/abort`` to stop it. These are the
KoboldCpp dialect's rules, so they live here, built on the pool's generic hooks: a request's ``abort``
event and its ``on_text`` callback (``ModelInstance.generate``).

- A generation is visible and abortable only through its own genkey. A request without one (every
  OpenAI and Ollama request) is seen and aborted by nobody — KoboldCpp shows it to anyone while nobody
  else waits; here users do not read or cut each other's work.
- An abort for a key that is still queued, or not seen yet (the abort can overtake its request), is
  remembered: that request ends at its turn with empty text, without reaching the worker (KoboldCpp's
  pending abort). At most ``PENDING`` such keys are kept per model, oldest forgotten first.
- ``/api/extra/last_logprobs`` returns the logprobs of the last finished generation of a genkey, to that
  genkey only; the last ``PENDING`` per model are kept.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from warren.pool.instance import ModelInstance

PENDING = 64


@dataclass(eq=False)
class Ticket:
    """One request's genkey: what it has generated so far, and its abort."""

    genkey: str
    abort: asyncio.Event = field(default_factory=asyncio.Event)
    parts: list[str] = field(default_factory=list)
    started: bool = False  # its turn came (before that, abort only marks it)

    def add(self, text: str) -> None:
        self.parts.append(text)

    def mark_started(self) -> None:
        self.started = True


class GenKeys:
    """The genkeys of the requests in flight, per model. One per app (``app.state.genkeys``)."""

    def __init__(self) -> None:
        self._tickets: dict[tuple[str, str], Ticket] = {}
        self._pending: dict[str, OrderedDict[str, None]] = {}  # per model: aborted keys not seen yet
        self._logprobs: dict[str, OrderedDict[str, Any]] = {}  # per model: the last logprobs of each genkey

    def finished(self, instance_name: str, genkey: str, logprobs: Any) -> None:
        if genkey:
            kept = self._logprobs.setdefault(instance_name, OrderedDict())
            kept.pop(genkey, None)
            kept[genkey] = logprobs
            while len(kept) > PENDING:
                kept.popitem(last=False)

    def last_logprobs(self, instance: ModelInstance, genkey: str) -> Any:
        return self._logprobs.get(instance.name, {}).get(genkey) if genkey else None

    def enter(self, instance: ModelInstance, ticket: Ticket) -> None:
        """The request is admitted on ``instance`` (its model is known now)."""
        if ticket.genkey:
            self._tickets[(instance.name, ticket.genkey)] = ticket
            if self._pending.get(instance.name, {}).pop(ticket.genkey, 0) is None:
                ticket.abort.set()  # aborted before it arrived

    def leave(self, instance_name: str | None, ticket: Ticket) -> None:
        if instance_name is not None and self._tickets.get((instance_name, ticket.genkey)) is ticket:
            del self._tickets[(instance_name, ticket.genkey)]

    def partial_text(self, instance: ModelInstance, genkey: str) -> str:
        """generate/check: the running text, for its owner only."""
        ticket = self._tickets.get((instance.name, genkey)) if genkey else None
        return "".join(ticket.parts) if ticket is not None and ticket.started else ""

    def abort(self, instance: ModelInstance, genkey: str) -> tuple[bool, bool]:
        """KoboldCpp abort: (success, done) — done when the generation was running and is now ending; not
        done when it was still queued (it will end at its turn). Without a known key nothing happens."""
        if not genkey:
            return False, False
        ticket = self._tickets.get((instance.name, genkey))
        if ticket is None:  # not here yet: its request will be aborted when it arrives
            pending = self._pending.setdefault(instance.name, OrderedDict())
            pending[genkey] = None
            while len(pending) > PENDING:
                pending.popitem(last=False)
            return True, False
        ticket.abort.set()
        return True, ticket.started
