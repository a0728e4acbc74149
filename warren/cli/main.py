"""``warren``: parse KoboldCpp-style flags and ``.kcpps`` files, validate, then serve (or report).

Order of precedence, as KoboldCpp: option defaults < ``--config`` file < flags typed on the command
line. Every start-up problem ends here as ``error: …`` + ``hint: …`` and exit status 2; no traceback
reaches the terminal for a user mistake.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from warren import __version__
from warren.catalog import Catalog
from warren.cli.parser import build_parser
from warren.cli.report import print_analysis, print_engine, print_plan
from warren.default_model import default_model_path
from warren.errors import ConfigError
from warren.kcpps import export_kcpps, read_kcpps
from warren.options import BY_KEY, Support, defaults
from warren.validation import Level, Plan, ValidationFailed, validate

if TYPE_CHECKING:
    from warren.settings import ServerSettings
    from warren.worker.launcher import Launcher

CONFIG_SUFFIXES = (".kcpps", ".kcppt")


def _say(level: str, message: str) -> None:
    print(f"{level}: {message}", file=sys.stderr)


def _flag(key: str) -> str:
    return BY_KEY[key].flags[0] if key in BY_KEY else f"--{key}"


def parse(argv: list[str] | None) -> tuple[dict[str, Any], set[str], dict[str, Any]]:
    """Return (merged options, explicitly-set keys, warren-only flags) after the command-line rules."""
    ns = {k: v for k, v in vars(build_parser().parse_args(argv)).items()
          if not (k in ("model_param", "port_param") and v is None)}
    own = {k: ns.pop(k) for k in ("check", "version") if k in ns}
    refused = [k for k in ns if k in BY_KEY and BY_KEY[k].support is Support.REFUSED]
    if refused:
        o = BY_KEY[refused[0]]
        raise ConfigError(f"{o.flags[0]} is a KoboldCpp flag warren does not implement: {o.reason}",
                          hint="remove it from the command line")
    for key in [k for k in ns if k in BY_KEY and BY_KEY[k].support is Support.ACCEPTED]:
        _say("note", f"{_flag(key)} is taken and has no effect: {BY_KEY[key].reason}")

    model_param = ns.pop("model_param", None)
    if model_param is not None:
        if model_param.lower().endswith(CONFIG_SUFFIXES) and "config" not in ns:
            ns["config"] = model_param  # KoboldCpp: a config file given as the model is loaded as config
        elif ns.get("model"):
            raise ConfigError("the model is given twice (as MODEL and with --model)", hint="give it once")
        else:
            ns["model"] = [model_param]
    if "port_param" in ns:
        port = ns.pop("port_param")
        if "port" in ns and ns["port"] != port:
            raise ConfigError(f"the port is given twice ({port} and --port {ns['port']})", hint="give it once")
        ns["port"] = port
    if len(ns.get("model") or []) > 1:
        raise ConfigError("--model takes one GGUF file", hint="merge split files with llama.cpp's gguf-split")

    opts = defaults()
    explicit: set[str] = set()
    if ns.get("config"):
        loaded = read_kcpps(ns["config"])
        opts.update(loaded.values)
        explicit |= {k for k, v in loaded.values.items() if v not in (None, False, "", [])}
        if loaded.ignored:
            _say("warning", f"{ns['config']}: KoboldCpp settings warren does not implement are ignored: "
                 + ", ".join(loaded.ignored))
    opts.update(ns)
    explicit |= set(ns)
    return opts, explicit, own


def main(argv: list[str] | None = None) -> None:
    try:
        code = run(argv)
    except ValidationFailed as exc:
        for finding in exc.errors:
            _say("error", finding.message)
            if finding.hint:
                _say("hint", finding.hint)
        code = 2
    except ConfigError as exc:
        _say("error", exc.message)
        if exc.hint:
            _say("hint", exc.hint)
        code = 2
    except KeyboardInterrupt:
        code = 130
    raise SystemExit(code)


def run(argv: list[str] | None) -> int:
    opts, explicit, own = parse(argv)
    if own.get("version"):
        print(f"warren {__version__}")
        return 0
    if opts.get("analyze"):
        print_analysis(Path(opts["analyze"]), opts)
        return 0
    if not opts.get("model") and not opts["nomodel"]:
        default = default_model_path()
        if default is None:
            raise ConfigError("no model given", hint="pass a GGUF file: warren MODEL.gguf (or --nomodel)")
        _say("note", f"no model given: serving the embedded default model {default.name}")
        opts["model"] = [str(default)]
    if opts.get("exportconfig"):
        path = export_kcpps({k: v for k, v in opts.items() if k != "exportconfig"}, opts["exportconfig"])
        print(f"wrote {path}")
        return 0
    plan = validate(opts, explicit)
    for finding in plan.findings:
        if finding.level is not Level.ERROR:
            _say(finding.level.value, finding.message)
    catalog = build_catalog(plan, opts)
    if own.get("check"):
        print_plan(plan, catalog)
        check_engine(plan)
        return 0
    serve(plan, catalog)
    return 0


def build_catalog(plan: Plan, opts: dict[str, Any]) -> Catalog:
    """The catalog, checked: invalid entries are warned about, a pinned set over the budget is an error."""
    catalog = Catalog(opts, active=plan.model, dirs=plan.server.models_dirs, catalog_file=plan.server.catalog_file,
                      embeddings=plan.server.embeddings_model)
    catalog.refresh()
    for entry in catalog.entries.values():
        if not entry.valid:
            _say("warning", f"model {entry.name!r} ({entry.source}) cannot be loaded: {entry.error}")
    for path, reason in catalog.skipped.items():
        _say("note", f"{path} is not served: {reason}")
    if plan.server.cluster:
        return catalog  # each node has its own budget: a model no node can hold is refused when it is asked for
    active = catalog.entries.get(plan.model.name) if plan.model else None
    if active is not None and active.estimate and active.estimate.total > plan.server.memory_budget:
        raise ConfigError(f"the model {active.name!r} needs about {active.estimate.total // 2**20} MiB, more than the "
                          f"memory budget of {plan.server.memory_budget // 2**20} MiB",
                          hint="raise --memory-budget, or lower --contextsize"
                          + (", or give --nomodel to serve only the models in the directory"
                             if plan.server.models_dirs or plan.server.catalog_file else ""))
    pinned = [e for e in catalog.entries.values() if e.pinned and e.estimate]
    need = sum(e.estimate.total for e in pinned if e.estimate)
    if need > plan.server.memory_budget:
        raise ConfigError(f"the pinned models ({', '.join(e.name for e in pinned)}) need about {need // 2**20} MiB, "
                          f"more than the memory budget of {plan.server.memory_budget // 2**20} MiB",
                          hint="raise --memory-budget or pin fewer models")
    return catalog


def check_engine(plan: Plan) -> None:
    """``--check`` proves the engine too: a probe loads a model in a subprocess and decodes a few tokens (the
    embedded default model when it is installed, else the active model). A build that cannot run here is
    an error, not an "ok" followed by a crash on every request."""
    from warren.engine_check import probe_engine

    report = probe_engine(model=default_model_path() or (plan.model.path if plan.model else None))
    print_engine(report)
    if not report.ok:
        raise ConfigError(report.error, hint=report.hint)


def cluster_launcher(server: ServerSettings) -> Launcher | None:
    """The Ray launcher for ``--cluster`` (None without it: the local one). Ray is optional and heavy, so
    it is imported here and only then; without it installed, ``--cluster`` is a start-up error."""
    if not server.cluster:
        return None
    try:
        from warren.worker.ray_launcher import RayLauncher
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.split(".")[0] != "ray":
            raise
        raise ConfigError("--cluster needs Ray, which is not installed here",
                          hint="pip install 'warren[ray]' (the same Ray version as the cluster's)") from None
    return RayLauncher.connect(server.cluster, memory_budget=server.node_budget)


def serve(plan: Plan, catalog: Catalog) -> None:
    # imported here so --check, --analyze and errors stay fast
    from warren.api.app import create_app
    from warren.api.server import WarrenServer
    from warren.logsetup import setup_logging
    from warren.pool.pool import Pool

    setup_logging(plan.server.debug, plan.server.quiet)
    pool = Pool.from_settings(plan.server, catalog, launcher=cluster_launcher(plan.server))
    app = create_app(pool)
    host = plan.server.host
    shown = f"[{host}]" if ":" in host else host
    _say("note", f"warren {__version__} serving {plan.model.name if plan.model else 'no model'} on "
         f"http://{shown}:{plan.server.port} (KoboldCpp /api, OpenAI /v1)")
    # uvicorn shuts down gracefully on SIGTERM, then re-raises the signal under the handler that was
    # there before it. Make that one a no-op, so a requested stop ends with status 0 after the workers
    # are stopped, instead of dying by the signal.
    signal.signal(signal.SIGTERM, lambda *_: None)
    WarrenServer(app, host, plan.server.port).run()
