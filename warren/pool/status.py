"""The pool as it is shown: ``GET /api/pool``, ``/metrics``, the dashboard and ``/api/pool/events``.

Read-only: it reads the policy (residency, reservations, keep-alive), the instances (worker, queue,
last exit), the measured footprints, quarantines and the warm spare, and writes nothing back. The state
shown for a model comes from ``warren/pool/state.py`` (``state_of``), the one place it is derived.

Events are built only when someone listens (``EventBus.listened``): describing a model is not free, and
a request publishes twice (granted, released).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from warren.pool.state import InstanceState, state_of

if TYPE_CHECKING:
    from warren.pool.instance import ModelInstance
    from warren.pool.pool import Pool


class StatusView:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    def publish(self, instance: ModelInstance, event: str, **extra: Any) -> None:
        if not self.pool.events.listened:
            return  # describing an instance is not free, and this runs twice per request
        self.pool.events.publish(event, model=instance.name, instance=self.describe(instance.name),
                                 pool=self.totals(), **extra)

    def publish_usage(self, model: str) -> None:
        instance = self.pool.instances.get(model)
        if instance is not None:
            self.publish(instance, "usage")

    def totals(self) -> dict[str, int]:
        """Budget figures. The warm spare is not reserved (the next load adopts it, inside that load's
        own reservation) and is only started when the budget has room for it; ``spare`` shows it."""
        pool = self.pool
        residents = pool.policy.residents
        measured = sum(pool.footprints.loaded.get(n, 0) for n, r in residents.items()
                       if r.phase is InstanceState.READY)
        parked = sum(r.bytes for r in residents.values() if r.phase is InstanceState.PARKED)
        kv_state = sum(r.state_bytes for r in residents.values() if r.phase is InstanceState.PARKED)
        return {"budget": pool.policy.budget, "reserved": pool.policy.reserved, "measured": measured,
                "parked": parked, "kv_state": kv_state, "spare": pool.spare.bytes}

    def describe(self, name: str) -> dict[str, Any]:
        pool = self.pool
        entry = pool.catalog.entries.get(name)
        inst = pool.instances.get(name)
        resident = pool.policy.residents.get(name)
        quarantined = pool.crashes.reason(name)
        status = inst.status() if inst else {"name": name, "handle": None, "state": None, "pid": None}
        status["state"] = state_of(inst.current_state if inst else None, resident.phase if resident else None,
                                   quarantined=quarantined is not None).value
        if quarantined is not None:
            status["quarantined"] = quarantined
        now = pool.clock.now()
        keep = pool.policy.keep_alive_of(resident) if resident is not None else None
        if pool.launcher.places:  # which nodes of the cluster have its model file
            path = str(entry.settings.path) if entry and entry.settings else None
            status["nodes"] = sorted(n.id for n in pool.cluster.values() if path in n.files)
        status.update({
            "active": name == pool.active_name,
            "memory": {"estimate": entry.estimate.as_dict() if entry and entry.estimate else None,
                       "measured": pool.footprints.loaded.get(name) if resident else None,
                       "gpu": pool.footprints.gpu.get(name) if resident and pool.launcher.reports_gpu else None,
                       "reserved": resident.bytes if resident else 0,
                       # what a parked worker keeps of its conversation (part of "reserved"): its whole context,
                       # or its saved KV state (warren/worker/kvstate.py); "kv_kept" says which
                       "kv_state": resident.state_bytes if resident else 0,
                       "kv_kept": _kept(inst, resident)},
            "in_flight": resident.in_flight if resident else 0,
            "pinned": bool(resident and resident.pinned) or bool(entry and entry.pinned),
            "keep_alive": keep,
            "expires_in": (max(0.0, keep - (now - resident.last_used))
                           if resident and keep is not None and keep >= 0 and not resident.pinned
                           and not resident.in_flight else None),
            "last_used_ago": (now - resident.last_used) if resident else None,
            "evictions": pool.evictions.get(name, 0),
            "crashes": inst.crashes if inst else 0,
            "culprits": pool.culprits.count(name),  # fingerprints of requests that crashed it: refused
            # Its share of the cores (warren/pool/compute.py): what it generates with now, or was last given.
            "compute": ({"threads": inst.handle.threads, "cores": list(inst.handle.cores),
                         "generating": inst.handle_id in pool.compute.running}
                        if inst and inst.handle and inst.handle.alive else None),
            "settings": entry.describe()["settings"] if entry else None,
            "error": entry.error if entry and not entry.valid else status.get("last_error"),
        })
        return status

    def nodes(self) -> list[dict[str, Any]]:
        """Each node of the cluster: its budget, what is reserved there, and where it is (empty on one
        machine)."""
        pool = self.pool
        if not pool.launcher.places:
            return []
        return [{**row, "address": pool.cluster[str(row["node"])].address} for row in pool.policy.node_status()
                if row["node"] in pool.cluster]

    def status(self) -> dict[str, Any]:
        pool = self.pool
        names = list(dict.fromkeys([*pool.catalog.entries, *pool.instances]))
        extra = {"nodes": self.nodes()} if pool.launcher.places else {}
        return {**pool.policy.status(), **self.totals(), "active": pool.active_name, **extra,
                "cores": pool.compute.cores, "instances": [self.describe(n) for n in names]}


def _kept(inst: Any, resident: Any) -> str | None:
    """``"context"`` or ``"state"`` for a parked worker that keeps its conversation; None otherwise."""
    if resident is None or resident.phase is not InstanceState.PARKED or not resident.state_bytes:
        return None
    return "context" if inst is not None and inst.handle is not None and inst.handle.parked_context else "state"
