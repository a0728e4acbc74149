"""``GET /metrics``: the pool in Prometheus text format (no client library: the format is plain text).

An operator's route, like ``/api/pool``: it needs the admin key where one is set."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse

from warren.api.admin import require_admin
from warren.api.deps import get_pool
from warren.pool.state import InstanceState

router = APIRouter()

STATES = tuple(s.value for s in InstanceState)  # one sample per state and model: 1 for its state, else 0


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


@router.get("/metrics", response_class=PlainTextResponse, dependencies=[Depends(require_admin)])
async def metrics(request: Request) -> str:
    pool = get_pool(request)
    status = pool.status()
    lines = [
        "# HELP warren_memory_budget_bytes Memory budget of the pool.",
        "# TYPE warren_memory_budget_bytes gauge",
        f"warren_memory_budget_bytes {status['budget']}",
        "# HELP warren_memory_reserved_bytes Memory counted against the budget (estimates while loading).",
        "# TYPE warren_memory_reserved_bytes gauge",
        f"warren_memory_reserved_bytes {status['reserved']}",
    ]
    series: dict[str, list[str]] = {k: [] for k in (
        "model_state", "model_memory_bytes", "model_requests_total", "model_tokens_total", "model_tokens_per_second",
        "model_loads_total", "model_evictions_total", "model_crashes_total", "model_in_flight")}
    for d in status["instances"]:
        m = f'model="{_label(d["name"])}"'
        for state in STATES:
            series["model_state"].append(f'warren_model_state{{{m},state="{state}"}} {int(d["state"] == state)}')
        est = (d["memory"]["estimate"] or {}).get("total", 0)
        series["model_memory_bytes"].append(f'warren_model_memory_bytes{{{m},kind="estimate"}} {est}')
        series["model_memory_bytes"].append(
            f'warren_model_memory_bytes{{{m},kind="measured"}} {d["memory"]["measured"] or 0}')
        inst = pool.instances.get(d["name"])
        series["model_requests_total"].append(f"warren_model_requests_total{{{m}}} {inst.requests if inst else 0}")
        series["model_tokens_total"].append(f"warren_model_tokens_total{{{m}}} {inst.tokens if inst else 0}")
        last = inst.last if inst else None
        speed = last.completion_tokens / last.generation_seconds if last and last.generation_seconds else 0.0
        series["model_tokens_per_second"].append(f"warren_model_tokens_per_second{{{m}}} {speed:.3f}")
        series["model_loads_total"].append(f"warren_model_loads_total{{{m}}} {inst.loads if inst else 0}")
        series["model_evictions_total"].append(f"warren_model_evictions_total{{{m}}} {d['evictions']}")
        series["model_crashes_total"].append(f"warren_model_crashes_total{{{m}}} {d['crashes']}")
        series["model_in_flight"].append(f"warren_model_in_flight{{{m}}} {d['in_flight']}")
    kinds = {"model_state": "gauge", "model_memory_bytes": "gauge", "model_tokens_per_second": "gauge",
             "model_in_flight": "gauge"}
    for name, samples in series.items():
        lines.append(f"# TYPE warren_{name} {kinds.get(name, 'counter')}")
        lines.extend(samples)
    return "\n".join(lines) + "\n"
