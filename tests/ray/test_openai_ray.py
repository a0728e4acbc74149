"""The OpenAI dialect's API tests (``tests/api/test_openai.py``), run again against a server whose worker is
placed on a three-node Ray cluster (``warren --cluster``): the API is the same whichever launcher runs.

The tests are imported, not copied; this module's ``server`` fixture replaces the session's local one for
them (pytest resolves a test's fixtures from the module it is collected in).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ray.cluster_utils import Cluster

from tests.api.test_openai import (  # noqa: F401 - collected here again, against the Ray launcher
    client,
    test_chat_stream_seed_and_usage,
    test_chat_uses_the_gguf_template,
    test_completion_and_usage,
    test_completion_stream_and_stop,
    test_errors_in_openai_shape,
    test_json_object_response_format,
    test_malformed_json_and_unknown_route,
    test_models,
)
from tests.conftest import Server, Servers

pytestmark = [pytest.mark.model, pytest.mark.ray, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def server(ray_cluster: Cluster, module_servers: Servers, model_path: Path) -> Server:
    srv = module_servers.start("--model", str(model_path), "--contextsize", "2048", "--cluster", ray_cluster.address)
    status = srv.pool()
    assert status["instances"][0]["state"] == "ready" and status["instances"][0]["node"] in {
        n["node"] for n in status["nodes"]}, srv.log()
    return srv
