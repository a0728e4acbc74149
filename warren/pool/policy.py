"""The pool's decisions: which model instances are resident, who waits, what is evicted or expires.

Pure and synchronous, after llama-swap's scheduler: events come in as plain method calls
(``request``, ``released``, ``load_finished``, ``exited``, ``unload``, ``tick``), decisions go out
through ``Effects`` — the complete list of what the policy can make happen. No method awaits
anything, so on the asyncio loop each decision is atomic and needs no lock; slow work (loading,
stopping) is started by an effect and its outcome comes back later as another event. Tests drive it
with a recording ``Effects`` and a number for the clock.

Memory accounting: every resident counts ``bytes`` against the budget — its estimate while loading,
its measured footprint once ready. An instance chosen for eviction is marked ``STOPPING`` and no
longer counted for admission; its worker exits while the new one loads. A resident's ``phase`` is an
``InstanceState`` (``warren/pool/state.py``), one of ``RESIDENT``: the policy's part of the one state.

Nodes: the budget is per node (``nodes``: a ``Capacity`` each). On one machine there is one node,
``LOCAL``, holding ``--memory-budget``; on a cluster the pool sets the nodes the launcher reports
(``set_nodes``), and a resident counts against the node it was placed on. A load goes to the node
``warren/pool/placement.py`` picks among those that may take it (a request's ``nodes``: where the
model's file is), evicting only instances of that node; ``--max-models`` counts across all nodes.

Parking: an instance evicted to make room is *parked* instead of stopped when what it keeps parked
(``park_bytes``: its worker and tokenizer tables, no context, the weights' pages unmapped) still fits
the budget next to the new one. A request for a parked model then only needs a new context, not a
new worker and model load: ~60 ms instead of ~150 ms for the default model here. Parked instances
count their parked bytes, take no ``--max-models`` slot, are the first to go when room is needed
(then they are stopped, never parked again), and are stopped by keep-alive and explicit unloads like
any idle instance: parking never keeps memory that the budget or the user wants back.

Saved KV state: a parked worker may also keep its conversation's KV cells (``warren/worker/kvstate.py``),
``state_bytes`` of them, counted in its ``bytes`` (``state_kept``). When an admission lacks only memory and
dropping saved states (least recently used first) makes enough room, those states are dropped
(``drop_state``) and their workers stay parked; otherwise eviction goes on as before (a stopped worker's
state goes with it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from warren.errors import Busy, DoesNotFit, WarrenError, WorkerNotPlaced
from warren.pool.eviction import Candidate, choose_victims
from warren.pool.placement import Capacity, Option, choose
from warren.pool.state import InstanceState
from warren.worker.launcher import LOCAL

MIB = 1024 * 1024


@dataclass
class Resident:
    name: str
    phase: InstanceState  # one of state.RESIDENT: loading, ready, parked, stopping
    bytes: int
    in_flight: int = 0  # granted requests not yet released (running or queued in the instance)
    last_used: float = 0.0
    pinned: bool = False
    keep_alive: float | None = None  # the operator's: seconds idle before unloading; None = the default; < 0 = never
    client_keep_alive: float | None = None  # a generation request's (Ollama keep_alive): may only shorten it
    reload_seconds: float = 0.0
    priority: int = 0  # lower is evicted first
    unload_reason: str = ""  # set: unload as soon as no request is in flight
    park_bytes: int = 0  # what it would keep parked; 0: it cannot be parked
    node: str = LOCAL  # where it was placed: it counts against that node's budget
    threads: int = 0  # compute threads it holds there (counted where the node reserves threads)
    state_bytes: int = 0  # parked: the saved KV state it keeps (part of ``bytes``)


@dataclass(frozen=True, slots=True)
class Waiter:
    ticket: int
    model: str
    need: int
    deadline: float
    park_need: int = 0
    nodes: frozenset[str] | None = None  # where it may go (None: any node)
    threads: int = 0


class Effects(Protocol):
    def start_load(self, model: str, evict: Sequence[str]) -> None:
        """Stop ``evict``, and load ``model`` (or resume it, if parked); ends in ``load_finished``."""

    def park(self, model: str) -> None:
        """Park the model's worker (free its context and weights' pages, keep the model); on failure
        the effect layer unloads it."""

    def stop(self, model: str, reason: str) -> None:
        """Stop the model's worker; ends in ``exited``."""

    def drop_state(self, model: str) -> None:
        """A parked worker frees the KV state it kept (``Resident.state_bytes``)."""

    def grant(self, ticket: int, model: str) -> None:
        """The request may proceed on ``model`` (it may still be loading: the request joins the load)."""

    def reject(self, ticket: int, error: WarrenError) -> None:
        """The request cannot be served; ``error`` says why."""


class PoolPolicy:
    def __init__(self, effects: Effects, *, budget: int = 0, nodes: Mapping[str, Capacity] | None = None,
                 max_models: int = 0, keep_alive: float = 300.0, wait_seconds: float = 60.0) -> None:
        """``budget``: the one node's (``LOCAL``); ``nodes`` instead: a budget per node (a cluster)."""
        self.effects = effects
        self.nodes: dict[str, Capacity] = dict(nodes) if nodes is not None else {LOCAL: Capacity(budget)}
        self.last_node: dict[str, str] = {}  # where each model was last resident (its file is cached there)
        self.max_models = max_models  # 0 = no cap beyond the budget
        self.keep_alive = keep_alive  # default seconds idle before an unpinned instance is unloaded
        self.wait_seconds = wait_seconds  # how long a request waits for room before a 503
        self.residents: dict[str, Resident] = {}
        self.waiting: deque[Waiter] = deque()

    # -- views ----------------------------------------------------------------------------------------
    def _counted(self) -> list[Resident]:
        return [r for r in self.residents.values() if r.phase is not InstanceState.STOPPING]

    @property
    def budget(self) -> int:
        """The budgets of all nodes together (the one node's, on one machine)."""
        return sum(c.memory for c in self.nodes.values())

    @property
    def reserved(self) -> int:
        """Bytes counted against the budget (stopping instances excluded: they are being freed)."""
        return sum(r.bytes for r in self._counted())

    def reserved_on(self, node: str) -> int:
        return sum(r.bytes for r in self._counted() if r.node == node)

    def _threads_free(self, node: str) -> int | None:
        """Threads not reserved on ``node``; None where threads are not reserved."""
        cap = self.nodes[node].threads
        return cap - sum(r.threads for r in self._counted() if r.node == node) if cap else None

    def _slots_free(self) -> int:
        loaded = [r for r in self._counted() if r.phase is not InstanceState.PARKED]
        return (self.max_models - len(loaded)) if self.max_models > 0 else 1 << 30

    # -- events ---------------------------------------------------------------------------------------
    def request(self, ticket: int, model: str, need: int, now: float, park_need: int = 0, *,
                nodes: Collection[str] | None = None, threads: int = 0) -> None:
        """A request (or an explicit load) wants ``model``; ``need`` is its expected footprint, ``park_need``
        what it would keep if parked later (0: it cannot be parked), ``nodes`` where it may be placed
        (None: any node), ``threads`` the compute threads it holds where they are reserved."""
        where = frozenset(nodes) if nodes is not None else None
        if (error := self._never_fits(model, need, where)) is not None:
            self.effects.reject(ticket, error)
            return
        waiter = Waiter(ticket, model, need, now + self.wait_seconds, park_need, where, threads)
        if not self._admit(waiter, now):
            self.waiting.append(waiter)

    def _never_fits(self, model: str, need: int, where: frozenset[str] | None) -> WarrenError | None:
        """Why a request can never be admitted as the nodes are now, or None."""
        resident = self.residents.get(model)
        if resident is not None and resident.phase is not InstanceState.PARKED:
            return None  # it is loaded already (or on its way): the request joins it
        eligible = [c.memory for n, c in self.nodes.items() if where is None or n in where]
        if not eligible:
            return WorkerNotPlaced(f"no node of the cluster can take model {model!r} now: "
                                   + ("none has its file" if where is not None and self.nodes else "there is none"),
                                   hint="start a node that has the model file (at the same path)", model=model)
        largest = max(eligible)
        if need <= largest:
            return None
        if list(self.nodes) == [LOCAL]:
            return DoesNotFit(f"model {model!r} needs about {need // MIB} MiB, more than the whole memory budget "
                              f"of {largest // MIB} MiB", hint="raise --memory-budget, or lower its --contextsize",
                              model=model, need=need, budget=largest)
        return DoesNotFit(f"model {model!r} needs about {need // MIB} MiB, more than the memory budget of any "
                          f"node that can take it (the largest: {largest // MIB} MiB)",
                          hint="give its nodes a larger warren_memory_mib, or lower its --contextsize",
                          model=model, need=need, budget=largest)

    def set_nodes(self, nodes: Mapping[str, Capacity], now: float) -> None:
        """The nodes of the cluster changed (one joined or left, a budget changed). A resident on a node that
        left keeps counting against nothing until its worker's exit is reported."""
        self.nodes = dict(nodes)
        self._settle(now)

    def withdraw(self, ticket: int, now: float) -> None:
        """A waiting request gave up (its client left, or the server is stopping): forget it, so nothing is
        evicted or loaded for it."""
        for w in [w for w in self.waiting if w.ticket == ticket]:
            self.waiting.remove(w)
        self._settle(now)

    def reject_waiting(self, error: WarrenError) -> None:
        """Every waiting request is refused with ``error`` (shutdown)."""
        while self.waiting:
            self.effects.reject(self.waiting.popleft().ticket, error)

    def released(self, model: str, now: float) -> None:
        """A granted request finished (successfully or not)."""
        r = self.residents.get(model)
        if r is not None and r.in_flight > 0:
            r.in_flight -= 1
            r.last_used = now
        self._settle(now)

    def load_finished(self, model: str, *, ok: bool, measured: int, load_seconds: float, now: float) -> None:
        r = self.residents.get(model)
        if r is None or r.phase is not InstanceState.LOADING:
            return
        if ok:
            r.phase = InstanceState.READY
            r.bytes = measured or r.bytes
            r.reload_seconds = load_seconds
            r.last_used = now
        else:
            del self.residents[model]
        self._settle(now)

    def measured(self, model: str, footprint: int, *, parked: bool = False) -> None:
        """A fresh measurement of a ready (or, with ``parked``, a parked) instance's footprint."""
        r = self.residents.get(model)
        if r is not None and r.phase is (InstanceState.PARKED if parked else InstanceState.READY) and footprint > 0:
            r.bytes = footprint
            if parked:
                r.park_bytes = max(footprint - r.state_bytes, 0)  # what parking itself keeps, without the state

    def state_kept(self, model: str, state_bytes: int) -> None:
        """A parked worker kept ``state_bytes`` of KV state: counted in its bytes until dropped or resumed."""
        r = self.residents.get(model)
        if r is not None and r.phase is InstanceState.PARKED and state_bytes > 0:
            r.bytes += state_bytes - r.state_bytes
            r.state_bytes = state_bytes

    def exited(self, model: str, now: float) -> None:
        """The model's worker is gone (stopped on purpose, or crashed)."""
        r = self.residents.pop(model, None)
        if r is not None:
            self.last_node[model] = r.node
        self._settle(now)

    def configure(self, model: str, *, pinned: bool | None = None, keep_alive: float | None = None,
                  clear_keep_alive: bool = False, priority: int | None = None,
                  client_keep_alive: float | None = None) -> None:
        """The operator's settings (pin, keep-alive, priority), or a client's keep-alive: a client's value
        only ever shortens the operator's (``keep_alive_of``), and a pinned instance ignores it."""
        r = self.residents.get(model)
        if r is None:
            return
        if pinned is not None:
            r.pinned = pinned
        if priority is not None:
            r.priority = priority
        if clear_keep_alive:
            r.keep_alive = None
            r.client_keep_alive = None
        elif keep_alive is not None:
            r.keep_alive = keep_alive
            r.client_keep_alive = None  # the operator's word is the last one
        if client_keep_alive is not None:
            r.client_keep_alive = client_keep_alive if client_keep_alive >= 0 else None

    def keep_alive_of(self, r: Resident) -> float:
        """Seconds ``r`` may stay idle (< 0: for ever): the operator's value (or the default), shortened by
        a client's; a pinned instance is never shortened."""
        keep = r.keep_alive if r.keep_alive is not None else self.keep_alive
        if r.client_keep_alive is not None and not r.pinned:
            keep = r.client_keep_alive if keep < 0 else min(keep, r.client_keep_alive)
        return keep

    def unload(self, model: str, reason: str, now: float) -> bool:
        """Unload now if idle, else as soon as its requests finish. False if it is not resident."""
        r = self.residents.get(model)
        if r is None or r.phase is InstanceState.STOPPING:
            return False
        r.unload_reason = reason
        r.pinned = False
        self._settle(now)
        return True

    def tick(self, now: float) -> None:
        """Time passed: expire waiters past their deadline and idle instances past their keep-alive."""
        for w in [w for w in self.waiting if w.deadline <= now]:
            self.waiting.remove(w)
            self.effects.reject(w.ticket, Busy(
                f"no room to load model {w.model!r} within {self.wait_seconds:g} s: the memory budget is "
                "held by models that are busy", retry_after=max(1, round(self.wait_seconds / 4)), model=w.model))
        self._settle(now)

    # -- decisions ------------------------------------------------------------------------------------
    def _admit(self, w: Waiter, now: float) -> bool:
        model = w.model
        r = self.residents.get(model)
        if r is not None and r.phase is not InstanceState.PARKED:
            if r.phase is InstanceState.STOPPING:
                return False  # wait until it is gone, then load it again
            r.in_flight += 1
            r.last_used = now
            r.unload_reason = ""
            self.effects.grant(w.ticket, model)
            return True
        own = r.bytes - r.state_bytes if r is not None else 0  # a parked instance grows from what it holds
        self._drop_states(w.need - own - (self.budget - self.reserved), keep=model)  # (one machine: parking)
        choice = choose(self._options(w, r))
        if choice is None:
            return False
        node, victims = choice.node, list(choice.victims)
        parked = self._park_some(victims, room=self.nodes[node].memory - self.reserved_on(node) - (w.need - own)
                                 + sum(self.residents[v].bytes for v in victims))
        for name in victims:
            victim = self.residents[name]
            if name in parked:
                victim.phase, victim.bytes = InstanceState.PARKED, victim.park_bytes
            else:
                victim.phase = InstanceState.STOPPING
        if r is None:
            self.residents[model] = Resident(model, InstanceState.LOADING, w.need, in_flight=1, last_used=now,
                                             park_bytes=w.park_need, node=node, threads=w.threads)
        else:
            r.phase, r.bytes, r.in_flight, r.last_used, r.unload_reason = InstanceState.LOADING, w.need, 1, now, ""
            r.state_bytes = 0  # resuming: its state goes into the new context
        for name in parked:
            self.effects.park(name)
        self.effects.start_load(model, [v for v in victims if v not in parked])
        self.effects.grant(w.ticket, model)
        return True

    def _options(self, w: Waiter, parked: Resident | None) -> list[Option]:
        """Every node the waiter's model could be loaded on now, each with the idle instances of that node
        to evict first. A parked model resumes where it is: its worker is there."""
        if parked is not None:
            nodes = [parked.node] if parked.node in self.nodes else []
        else:
            nodes = [n for n in self.nodes if w.nodes is None or n in w.nodes]
        own = parked.bytes - parked.state_bytes if parked is not None else 0
        options = []
        for node in nodes:
            candidates = [Candidate(c.name, c.bytes, c.last_used, c.reload_seconds, c.priority,
                                    parked=c.phase is InstanceState.PARKED, threads=c.threads)
                          for c in self._counted()
                          if c.node == node and c.name != w.model and c.in_flight == 0 and not c.pinned
                          and c.phase in (InstanceState.READY, InstanceState.PARKED)]
            reserved, budget = self.reserved_on(node), self.nodes[node].memory
            free_threads = self._threads_free(node)
            if free_threads is not None and parked is not None:
                free_threads += parked.threads
            victims = choose_victims(candidates, need=w.need - own, free=budget - reserved,
                                     slots_free=self._slots_free(), need_threads=w.threads, free_threads=free_threads)
            if victims is not None:
                recency = max((self.residents[v].last_used for v in victims), default=0.0)
                options.append(Option(node, tuple(victims), reserved / budget if budget else 1.0,
                                      self.last_node.get(w.model) == node, recency))
        return options

    def _drop_states(self, short: int, keep: str) -> None:
        """Drop saved KV states of parked instances, least recently used first, when that alone covers the
        ``short`` bytes an admission lacks (else eviction decides, and stopped workers take theirs along).
        A state is cheaper to lose than a worker: losing it costs one prompt's decode on the next turn."""
        holders = sorted((r for r in self.residents.values() if r.phase is InstanceState.PARKED and r.state_bytes
                          and r.name != keep), key=lambda r: r.last_used)
        if short <= 0 or sum(r.state_bytes for r in holders) < short or self._slots_free() < 1:
            return  # nothing lacking, not enough to drop, or an instance must go for its slot anyway
        for r in holders:
            if short <= 0:
                break
            short -= r.state_bytes
            r.bytes -= r.state_bytes
            r.state_bytes = 0
            self.effects.drop_state(r.name)

    def _park_some(self, victims: list[str], room: int) -> set[str]:
        """Which ready victims to park rather than stop: the most recently used first (the likeliest to
        be wanted again), while their parked bytes fit in the ``room`` left after the new load."""
        parked: set[str] = set()
        for name in reversed(victims):
            v = self.residents[name]
            if v.phase is InstanceState.READY and 0 < v.park_bytes <= room:
                parked.add(name)
                room -= v.park_bytes
        return parked

    def _settle(self, now: float) -> None:
        """Unload what should go, then admit waiters that now fit (in arrival order)."""
        for r in list(self.residents.values()):
            if r.phase not in (InstanceState.READY, InstanceState.PARKED) or r.in_flight:
                continue
            if r.unload_reason:
                r.phase = InstanceState.STOPPING
                self.effects.stop(r.name, r.unload_reason)
                continue
            keep = self.keep_alive_of(r)
            if not r.pinned and keep >= 0 and now - r.last_used >= keep:
                r.phase = InstanceState.STOPPING
                self.effects.stop(r.name, "keep-alive expired")
        for w in list(self.waiting):
            if self._admit(w, now):
                self.waiting.remove(w)

    def status(self) -> dict[str, object]:
        return {"budget": self.budget, "reserved": self.reserved, "max_models": self.max_models,
                "default_keep_alive": self.keep_alive, "waiting": len(self.waiting)}

    def node_status(self) -> list[dict[str, object]]:
        """Each node's budget and what is reserved there (the status of a pool on a cluster)."""
        out: list[dict[str, object]] = []
        for node, cap in self.nodes.items():
            free_threads = self._threads_free(node)
            out.append({"node": node, "budget": cap.memory, "reserved": self.reserved_on(node),
                        "threads": cap.threads or None,
                        "threads_reserved": cap.threads - free_threads if free_threads is not None else None,
                        "models": sorted(r.name for r in self._counted() if r.node == node)})
        return out
