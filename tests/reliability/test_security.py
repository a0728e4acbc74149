"""Who may do what: an auth and CSRF matrix over every route family, on real servers, and no secret in the log.

The rule under test (``docs/api-compat.md``, "Authentication and visibility"):

- **info** (versions, the context size, perf counters, liveness) is open to anyone, as in KoboldCpp;
  ``/api/v1/model`` names the model only for the API key.
- **generation, tokens, generate/check and abort, and listings that name models** (``/v1/models``,
  ``/api/tags``, ``/api/ps``, ``/api/show``) need ``--password`` where one is set.
- **the operator's routes** (KoboldCpp's admin API, the pool API, ``/metrics``) need the operator's key:
  ``--adminpassword``, else ``--password``; with neither, only a server that listens on loopback alone
  opens them — and then a browser's cross-site request or a foreign ``Host`` (DNS rebinding) is refused.

Each cell's expectation comes from ``allowed()``, which spells the rule out once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, Servers, start_server

MODEL = "SmolLM2-135M-Instruct.Q4_1"
GEN_KEY, ADMIN_KEY = "pw-gen-8841", "pw-adm-5512"


@dataclass(frozen=True)
class Route:
    family: str  # info | client | operator | kobold_admin
    method: str
    path: str
    body: dict | None = None

    @property
    def changes_state(self) -> bool:
        return self.method not in ("GET", "HEAD")


ROUTES = [
    *(Route("info", "GET", p) for p in ("/api/v1/info/version", "/api/extra/version", "/api/extra/perf",
                                        "/api/extra/true_max_context_length", "/api/version", "/ping",
                                        "/api/v1/config/max_length")),
    Route("client", "POST", "/api/v1/generate", {"prompt": "Hi", "max_length": 1}),
    Route("client", "POST", "/api/latest/generate", {"prompt": "Hi", "max_length": 1}),
    Route("client", "POST", "/api/extra/generate/stream", {"prompt": "Hi", "max_length": 1}),
    Route("client", "POST", "/api/extra/generate/check", {}),
    Route("client", "GET", "/api/extra/generate/check"),
    Route("client", "POST", "/api/extra/abort", {}),
    Route("client", "POST", "/api/extra/tokencount", {"prompt": "Hi"}),
    Route("client", "POST", "/api/extra/tokenize", {"prompt": "Hi"}),
    Route("client", "POST", "/api/extra/detokenize", {"ids": [1]}),
    Route("client", "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 1}),
    Route("client", "POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}),
    Route("client", "POST", "/api/generate", {"model": MODEL, "prompt": "Hi", "stream": False,
                                              "options": {"num_predict": 1}}),
    Route("client", "POST", "/api/chat", {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                          "stream": False, "options": {"num_predict": 1}}),
    Route("client", "GET", "/v1/models"),
    Route("client", "GET", "/api/tags"),
    Route("client", "GET", "/api/ps"),
    Route("client", "POST", "/api/show", {"model": MODEL}),
    Route("operator", "GET", "/api/pool"),
    Route("operator", "GET", "/metrics"),
    Route("operator", "POST", f"/api/models/{MODEL}/load", {}),
    Route("operator", "POST", f"/api/models/{MODEL}/activate", {}),
    Route("operator", "POST", "/api/models/nosuchmodel/unload", {}),  # allowed → 404, so nothing is unloaded
    Route("operator", "DELETE", f"/api/instances/{MODEL}@999"),  # allowed → 410
    Route("kobold_admin", "GET", "/api/admin/list_options"),
    Route("kobold_admin", "POST", "/api/admin/reload_config", {"filename": "nosuch.gguf"}),
]

CONFIGS = {  # name: (extra flags, the API key, the operator's key)
    "open": ([], None, None),
    "password": (["--password", GEN_KEY], GEN_KEY, GEN_KEY),
    "both": (["--password", GEN_KEY, "--adminpassword", ADMIN_KEY], GEN_KEY, ADMIN_KEY),
}


def allowed(config: str, route: Route, key: str | None) -> bool:
    """The documented rule, once."""
    _, api_key, operator_key = CONFIGS[config]
    if route.family == "info":
        return True
    if route.family == "client":
        return api_key is None or key == api_key
    return operator_key is None or key == operator_key  # operator and KoboldCpp admin routes


def refused(route: Route, r: httpx.Response) -> bool:
    if route.family == "kobold_admin":  # KoboldCpp answers an auth failure with 200 and an empty answer
        return r.status_code == 200 and r.json() in ([], {"success": False})
    return r.status_code in (401, 403)


@pytest.fixture(scope="module", params=list(CONFIGS))
def server(request: pytest.FixtureRequest, module_servers: Servers, tmp_path_factory: pytest.TempPathFactory,
           model_path: Path) -> tuple[str, Server]:
    admindir = tmp_path_factory.mktemp("admin")
    return request.param, module_servers.start("--model", str(model_path), "--contextsize", "512", "--admin",
                                               "--admindir", str(admindir), "--no-warm-spare",
                                               *CONFIGS[request.param][0])


def call(srv: Server, route: Route, key: str | None = None, **headers: str) -> httpx.Response:
    h = dict(headers)
    if key:
        h["Authorization"] = f"Bearer {key}"
    return httpx.request(route.method, f"{srv.url}{route.path}", json=route.body, headers=h, timeout=60)


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_who_may_call_each_route(server: tuple[str, Server], route: Route) -> None:
    config, srv = server
    for key in (None, "wrong-key", GEN_KEY, ADMIN_KEY):
        r = call(srv, route, key)
        assert refused(route, r) is not allowed(config, route, key), (config, key, r.status_code, r.text[:200])
        assert r.status_code < 500, r.text


OPERATOR_ROUTES = [r for r in ROUTES if r.family in ("operator", "kobold_admin")]
FORGED = {"Origin": "http://evil.example", "Content-Type": "text/plain"}


@pytest.mark.parametrize("route", [r for r in OPERATOR_ROUTES if r.changes_state], ids=lambda r: f"{r.method} {r.path}")
def test_a_cross_site_forgery_is_refused(server: tuple[str, Server], route: Route) -> None:
    """A web page's simple request (text/plain, no preflight) to a state-changing operator route is refused,
    also on a server where those routes are otherwise open, and gets no CORS header to read the answer."""
    _, srv = server
    r = call(srv, route, **FORGED)
    assert r.status_code == 403 and "cross-origin request from http://evil.example" in r.text
    assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize("route", OPERATOR_ROUTES, ids=lambda r: f"{r.method} {r.path}")
def test_a_rebinding_host_is_refused_and_the_servers_own_origin_is_not(server: tuple[str, Server],
                                                                       route: Route) -> None:
    config, srv = server
    key = CONFIGS[config][2]
    rebound = call(srv, route, key, Host="evil.example")
    assert rebound.status_code == 403 and "is not a loopback name" in rebound.text
    assert not refused(route, call(srv, route, key, Origin=srv.url, **{"Content-Type": "text/plain"}))


@pytest.mark.parametrize("route", [r for r in OPERATOR_ROUTES if r.changes_state], ids=lambda r: f"{r.method} {r.path}")
def test_a_cross_origin_call_with_the_operators_key_is_deliberate(server: tuple[str, Server], route: Route) -> None:
    config, srv = server
    key = CONFIGS[config][2]
    if key is None:
        pytest.skip("this server has no operator key")
    assert not refused(route, call(srv, route, key, **FORGED))


def test_client_routes_keep_koboldcpps_open_cors_and_operator_routes_get_none(server: tuple[str, Server]) -> None:
    _, srv = server
    preflight = {"Origin": "http://anywhere.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization"}
    r = httpx.options(f"{srv.url}/api/v1/generate", headers=preflight)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"  # KoboldCpp's default
    r = httpx.options(f"{srv.url}/api/models/{MODEL}/unload", headers=preflight)
    assert "access-control-allow-origin" not in r.headers


def test_named_cors_origins_reach_the_operator_routes_too(tmp_path: Path, model_path: Path) -> None:
    srv = start_server(["--model", str(model_path), "--contextsize", "512", "--no-warm-spare", "--adminpassword",
                        ADMIN_KEY, "--cors-origins", "http://app.example"], tmp_path)
    try:
        ok = httpx.get(f"{srv.url}/api/v1/model", headers={"Origin": "http://app.example"})
        assert ok.headers.get("access-control-allow-origin") == "http://app.example"
        other = httpx.get(f"{srv.url}/api/v1/model", headers={"Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in other.headers
        pool = httpx.get(f"{srv.url}/api/pool", headers={"Origin": "http://app.example",
                                                           "Authorization": f"Bearer {ADMIN_KEY}"})
        assert pool.status_code == 200 and pool.headers.get("access-control-allow-origin") == "http://app.example"
    finally:
        srv.stop()


def test_what_an_unauthenticated_client_sees(server: tuple[str, Server], model_path: Path) -> None:
    """No absolute path reaches a client without the operator's key; model names need the API key."""
    config, srv = server
    api_key = CONFIGS[config][1]
    name = httpx.get(f"{srv.url}/api/v1/model").json()["result"]
    assert name == ("koboldcpp/protected-model" if api_key else f"koboldcpp/{MODEL}")
    show = call(srv, Route("client", "POST", "/api/show", {"model": MODEL}), api_key)
    assert show.status_code == 200 and f"FROM {model_path.name}\n" in show.json()["modelfile"]
    assert str(model_path.parent) not in show.text
    pool = call(srv, Route("operator", "GET", "/api/pool"), CONFIGS[config][2])
    assert str(model_path) in pool.text  # the operator does see where the file is


def test_handles_are_exact_on_every_route(server: tuple[str, Server]) -> None:
    config, srv = server
    key = CONFIGS[config][2]
    assert call(srv, Route("operator", "POST", "/api/models/@1/load", {}), key).status_code == 404
    stale = call(srv, Route("operator", "POST", f"/api/models/{MODEL}@999999/load", {}), key)
    assert stale.status_code == 410 and "is gone" in stale.text
    assert httpx.get(f"{srv.url}/m/{MODEL}@999/api/extra/perf").status_code == 410


def test_no_secret_reaches_the_log(tmp_path: Path, model_path: Path) -> None:
    srv = start_server(["--model", str(model_path), "--contextsize", "512", "--no-warm-spare", "--debugmode",
                        "--password", GEN_KEY, "--adminpassword", ADMIN_KEY], tmp_path)
    try:
        for key in (GEN_KEY, ADMIN_KEY, "wrong-key"):
            httpx.post(f"{srv.url}/api/v1/generate", json={"prompt": "Hi", "max_length": 1},
                       headers={"Authorization": f"Bearer {key}"}, timeout=60)
            httpx.get(f"{srv.url}/api/pool", headers={"Authorization": f"Bearer {key}"})
        log = srv.log()
        assert "DEBUG" in log  # --debugmode really logged more
        for secret in (GEN_KEY, ADMIN_KEY):
            assert secret not in log
    finally:
        srv.stop()
