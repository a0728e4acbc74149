"""Schemathesis over warren's own OpenAPI schema: generated requests to every operation, zero 5xx.

The server runs the real model with ``--genlimit 4`` (so generated requests asking for huge outputs
stay quick) and the admin API on (loopback). ``/m/{model}/…`` duplicates of the dialect routes are the
same handlers and are left out; so is the endless ``/api/pool/events`` stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import Server, start_server


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[Server]:
    admindir = tmp_path_factory.mktemp("admin")
    (admindir / "other.kcpps").write_text(f'{{"model_param": "{model_path}", "contextsize": 512}}')
    server = start_server(["--model", str(model_path), "--contextsize", "512", "--genlimit", "4", "--admin",
                           "--admindir", str(admindir), "--no-warm-spare"], tmp_path_factory.mktemp("fuzz"))
    yield server
    assert httpx.get(f"{server.url}/ping").status_code == 200  # still serving after everything
    server.stop()


def test_no_server_errors(fuzz_server: Server) -> None:
    """Every operation, a few generated requests each (schemathesis' strategies driven by hypothesis
    directly: its pytest plugin does not load under this pytest version)."""
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    schema = schema.exclude(path_regex=r"^/m/").exclude(path="/api/pool/events")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30
    failures: list[str] = []
    statuses: dict[int, int] = {}
    for operation in operations:

        @settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
                  database=None)
        @given(case=operation.as_strategy())
        def run(case) -> None:  # type: ignore[no-untyped-def]
            response = case.call(base_url=fuzz_server.url, timeout=60)
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} -> {response.status_code} "
                                f"{response.text[:200]}")

        run()
    assert failures == []
    assert sum(statuses.values()) >= 3 * len(operations)  # it did generate and send requests
