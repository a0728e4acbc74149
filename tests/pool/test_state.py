"""The one state enum: how the shown state is derived, and that its wire values are the ones the
dashboard and the metrics use (warren/pool/state.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from warren.api.metrics import STATES
from warren.pool.state import RESIDENT, InstanceState, state_of

S = InstanceState
STATIC = Path(__file__).resolve().parents[2] / "warren" / "web" / "static"


@pytest.mark.parametrize(("instance", "resident", "quarantined", "shown"), [
    (None, None, False, S.UNLOADED),  # never loaded
    (S.READY, S.READY, False, S.READY),
    (S.BUSY, S.READY, False, S.BUSY),
    (S.STARTING, S.LOADING, False, S.STARTING),  # the worker is not up yet
    (S.LOADING, S.LOADING, False, S.LOADING),
    (S.PARKED, S.PARKED, False, S.PARKED),
    (S.LOADING, S.PARKED, False, S.LOADING),  # being resumed
    (S.READY, S.STOPPING, False, S.STOPPING),  # the policy let it go: its requests finish first
    (S.READY, None, False, S.UNLOADED),  # no longer resident: what the instance says is stale
    (S.PARKED, None, False, S.UNLOADED),
    (S.STOPPING, None, False, S.STOPPING),
    (S.UNLOADED, None, False, S.UNLOADED),
    (S.CRASHED, None, False, S.CRASHED),  # crashed, will be loaded again on demand
    (S.CRASHED, S.LOADING, False, S.CRASHED),  # waiting for its back-off: the crash is what is known
    (S.LOAD_FAILED, None, False, S.LOAD_FAILED),
    (S.CRASHED, None, True, S.CRASHED),  # quarantined after crashes
    (S.UNLOADED, None, True, S.LOAD_FAILED),  # quarantined after a refused load
    (None, None, True, S.LOAD_FAILED),
    (S.READY, S.READY, True, S.READY),  # an operator's load serves, quarantine or not
    (S.BUSY, S.READY, True, S.BUSY),
])
def test_the_shown_state(instance: S | None, resident: S | None, quarantined: bool, shown: S) -> None:
    assert state_of(instance, resident, quarantined=quarantined) is shown


def test_the_wire_values_do_not_change() -> None:
    assert [s.value for s in S] == ["unloaded", "starting", "loading", "ready", "busy", "parked", "stopping",
                                    "crashed", "load_failed"]
    assert tuple(s.value for s in S) == STATES  # one metrics sample per state
    assert {s.value for s in RESIDENT} == {"loading", "ready", "parked", "stopping"}


def test_the_dashboard_names_only_these_states() -> None:
    js = (STATIC / "app.js").read_text()
    css = (STATIC / "style.css").read_text()
    compared = re.findall(r'm\.state === "(\w+)"', js)
    listed = [w for group in re.findall(r"\[([^\]]*)\]\.includes\(m\.state\)", js) for w in re.findall(r'"(\w+)"', group)]
    styled = re.findall(r"\.state\.(\w+)", css)
    assert compared and listed and styled  # the patterns still find what they look for
    assert set(compared + listed + styled) <= {s.value for s in S}
