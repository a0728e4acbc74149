"""The one state of a model instance, and the one place its shown value is derived.

Two owners know part of it: the policy (``warren/pool/policy.py``) knows whether the model is resident
and in which phase — loading, ready, parked, stopping — and the instance (``warren/pool/instance.py``)
knows what its worker is doing — starting, loading, serving, crashed. Both speak ``InstanceState``, and
``state_of`` combines them into what ``/api/pool``, ``/metrics`` and the dashboard show.

The values are wire strings: the dashboard (``warren/web/static/app.js``, ``style.css``), the metrics'
``state`` label and clients read them, so they never change (``tests/pool/test_state.py`` checks the
static files name only these).

- ``unloaded``: no worker (never loaded, unloaded, evicted and stopped).
- ``starting``: a worker is starting (interpreter, engine import); ``loading``: it is loading the model
  (also a parked model being resumed).
- ``ready``: loaded and idle; ``busy``: generating (requests may queue behind it).
- ``parked``: the worker lives with its model but no context (``warren/pool/policy.py``).
- ``stopping``: being stopped (the policy chose it; its requests finish first).
- ``crashed``: its worker died by itself; ``load_failed``: the model could not be loaded. Both also
  show a quarantined model, until its file changes or an operator loads it.
"""

from __future__ import annotations

import enum


class InstanceState(enum.StrEnum):
    UNLOADED = "unloaded"
    STARTING = "starting"
    LOADING = "loading"
    READY = "ready"
    BUSY = "busy"
    PARKED = "parked"
    STOPPING = "stopping"
    CRASHED = "crashed"
    LOAD_FAILED = "load_failed"


# The phases the policy gives a resident (it never holds the others).
RESIDENT = frozenset({InstanceState.LOADING, InstanceState.READY, InstanceState.PARKED, InstanceState.STOPPING})
# An instance in one of these has (or is getting) a worker that serves: shown only while it is resident.
LIVE = frozenset({InstanceState.STARTING, InstanceState.LOADING, InstanceState.READY, InstanceState.BUSY,
                  InstanceState.PARKED})
SERVING = frozenset({InstanceState.READY, InstanceState.BUSY})


def state_of(instance: InstanceState | None, resident: InstanceState | None, *, quarantined: bool
             ) -> InstanceState:
    """What is shown for a model: ``instance`` is its instance's state (None: it never had one),
    ``resident`` the policy's phase (None: not resident), ``quarantined`` whether it is refused.

    - Not resident: a live instance state is stale (its worker is being let go): ``unloaded``.
    - Resident and ``stopping`` for the policy: ``stopping``, whatever the worker still does.
    - Quarantined and not serving: ``crashed`` if its worker crashed, else ``load_failed``.
    - Otherwise the instance's own state."""
    state = instance or InstanceState.UNLOADED
    if resident is None and state in LIVE:
        state = InstanceState.UNLOADED
    elif resident is InstanceState.STOPPING and state in LIVE:
        state = InstanceState.STOPPING
    if quarantined and state not in SERVING:
        state = InstanceState.CRASHED if instance is InstanceState.CRASHED else InstanceState.LOAD_FAILED
    return state
