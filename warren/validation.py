"""The one rule set every configuration passes before any worker starts.

The CLI, ``.kcpps`` loading and (later) the admin API all call ``validate``. Each rule is a small
function over a ``RuleContext`` that yields ``Finding``s; the table ``RULES`` is the whole policy and
the test suite has one row per rule. A finding is an error (start-up stops: ``error: …`` + hint,
exit 2; at runtime a 4xx), a warning, or a note. A finding may carry a ``fix`` — the adjusted
option values that make the note true ("clamped to 31", "threads picked automatically") — so the
rule that notices a problem is also the one place that decides the correction.

Machine facts (memlock limit, whether a port is free, CPU count) come from an ``Environment`` so the
table-driven tests can state them instead of depending on the machine that runs them.
"""

from __future__ import annotations

import enum
import errno
import os
import resource
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warren import chat_adapters
from warren.errors import ConfigError, ModelFileError
from warren.gguf.reader import GGUFInfo, read_gguf
from warren.options import BATCH_SIZE_CHOICES, CONTEXT_RANGE, DEFAULT_GEN_RANGE
from warren.settings import ModelSettings, ServerSettings
from warren.story import read_story
from warren.units import parse_bytes, parse_duration

CAP_IPC_LOCK = 14  # linux/capability.h: lets a process lock memory beyond RLIMIT_MEMLOCK


class Level(enum.Enum):
    ERROR = "error"
    WARNING = "warning"
    NOTE = "note"


@dataclass(frozen=True, slots=True)
class Finding:
    level: Level
    message: str
    hint: str = ""
    fix: dict[str, Any] = field(default_factory=dict)


def _memlock_limit() -> tuple[int, bool]:
    """(soft RLIMIT_MEMLOCK in bytes or -1 for unlimited, whether CAP_IPC_LOCK lifts it)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    capable = False
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    capable = bool(int(line.split()[1], 16) >> CAP_IPC_LOCK & 1)
    except OSError:
        pass
    return (-1 if soft == resource.RLIM_INFINITY else soft), capable


def _port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound, or None. Binds and closes at once (SO_REUSEADDR as uvicorn)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "in use"
            return exc.strerror or str(exc)
    return None


def _auto_threads() -> int:
    """Physical cores available to this process, at most 48 (KoboldCpp's cap)."""
    try:
        import psutil

        physical = psutil.cpu_count(logical=False) or 0
    except ImportError:
        physical = 0
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(physical or available, available, 48))


def _memory() -> tuple[int, int]:
    """(total, available) RAM in bytes."""
    import psutil

    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


@dataclass(frozen=True, slots=True)
class Environment:
    memlock_limit: Callable[[], tuple[int, bool]] = _memlock_limit
    memory: Callable[[], tuple[int, int]] = _memory
    port_problem: Callable[[str, int], str | None] = _port_problem
    auto_threads: Callable[[], int] = _auto_threads


@dataclass
class RuleContext:
    opts: dict[str, Any]  # merged KoboldCpp keys (defaults < .kcpps < command line)
    explicit: frozenset[str]  # keys the user set (command line or config), not defaults
    env: Environment
    check_port: bool = True
    gguf: GGUFInfo | None = None

    @property
    def model_path(self) -> str | None:
        model = self.opts.get("model")
        if isinstance(model, list):
            model = model[0] if model else None
        return model or None


Rule = Callable[[RuleContext], Iterable[Finding]]


def err(message: str, hint: str = "") -> Finding:
    return Finding(Level.ERROR, message, hint)


# -- rules on options alone ----------------------------------------------------------------------
def rule_context_size(ctx: RuleContext) -> Iterator[Finding]:
    lo, hi = CONTEXT_RANGE
    n = ctx.opts["contextsize"]
    if not lo <= n <= hi:
        yield err(f"--contextsize {n} is outside [{lo}, {hi}]", "pick a size such as 4096 or 8192")


def rule_batch_size(ctx: RuleContext) -> Iterator[Finding]:
    n = ctx.opts["batchsize"]
    if n not in BATCH_SIZE_CHOICES:
        yield err(f"--batchsize {n} is not a valid choice",
                  f"use one of {', '.join(map(str, BATCH_SIZE_CHOICES))}")


def rule_default_gen_amount(ctx: RuleContext) -> Iterator[Finding]:
    lo, hi = DEFAULT_GEN_RANGE
    n = ctx.opts["defaultgenamt"]
    if not lo <= n <= hi:
        yield err(f"--defaultgenamt {n} is outside [{lo}, {hi}]", "KoboldCpp's default is 768")


def rule_gen_limit(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.opts["genlimit"] < 0:
        yield err(f"--genlimit {ctx.opts['genlimit']} is negative", "0 means no limit")


def rule_threads(ctx: RuleContext) -> Iterator[Finding]:
    fix: dict[str, Any] = {}
    if ctx.opts["threads"] <= 0:
        fix["threads"] = ctx.env.auto_threads()
        yield Finding(Level.NOTE, f"--threads picked automatically: {fix['threads']}", fix=fix)
    if ctx.opts["blasthreads"] <= 0:
        yield Finding(Level.NOTE, "", fix={"blasthreads": fix.get("threads", ctx.opts["threads"])})


def rule_quant_kv(ctx: RuleContext) -> Iterator[Finding]:
    q = ctx.opts["quantkv"]
    if q not in (0, 1, 2):
        yield err(f"--quantkv {q} is not a valid choice", "use 0 (f16), 1 (q8_0) or 2 (q4_0)")
    elif q and not ctx.opts["flashattention"]:
        yield Finding(Level.WARNING, f"--quantkv {q} without --flashattention quantizes only the K cache "
                      "and is slower", "add --flashattention")


def rule_rope(ctx: RuleContext) -> Iterator[Finding]:
    rope = ctx.opts["ropeconfig"]
    if not rope or len(rope) > 2 or any(v < 0 for v in rope):
        yield err(f"--ropeconfig {' '.join(map(str, rope or []))} is not 'SCALE [BASE]' with values >= 0",
                  "for example --ropeconfig 0.5 10000; 0 keeps the model's own value")


def rule_flash_attention(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.opts["flashattention"] and ctx.opts["noflashattention"]:
        yield err("--flashattention and --noflashattention contradict each other",
                  "give one of them, or neither to let warren measure which is faster")


def rule_mmap_mlock(ctx: RuleContext) -> Iterator[Finding]:
    o = ctx.opts
    if o["usemmap"] and o["nommap"]:
        yield err("--usemmap and --nommap contradict each other", "give only one of them")
    elif o["usemlock"] and o["nommap"]:
        yield err("--usemlock with --nommap is refused: llama.cpp can crash locking a non-mapped model "
                  "(KoboldCpp issue #1323)", "drop --nommap; --usemlock maps the model file and locks it")
    elif o["usemlock"] and not o["usemmap"] and "usemmap" not in ctx.explicit:
        yield Finding(Level.NOTE, "--usemlock implies --usemmap: the model file is mapped, then locked in RAM",
                      fix={"usemmap": True})


def rule_port(ctx: RuleContext) -> Iterator[Finding]:
    port = ctx.opts["port"]
    if not 1 <= port <= 65535:
        yield err(f"port {port} is outside [1, 65535]", "the KoboldCpp default is 5001")
    elif ctx.check_port:
        problem = ctx.env.port_problem(ctx.opts["host"], port)
        if problem:
            yield err(f"cannot listen on {ctx.opts['host']}:{port}: {problem}",
                      "another server (maybe another warren or KoboldCpp) uses it; pick one with --port")


def rule_multiuser(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.opts["multiuser"] < 0:
        yield err(f"--multiuser {ctx.opts['multiuser']} is negative",
                  "0 rejects concurrent requests; N queues N-1 behind the running one")


def rule_request_size(ctx: RuleContext) -> Iterator[Finding]:
    if not 1 <= ctx.opts["maxrequestsize"] <= 1024:
        yield err(f"--maxrequestsize {ctx.opts['maxrequestsize']} MB is outside [1, 1024]", "the default is 32")


def rule_parallel(ctx: RuleContext) -> Iterator[Finding]:
    n = ctx.opts["parallelrequests"]
    if not 1 <= n <= 64:
        yield err(f"--parallelrequests {n} is outside [1, 64]", "1 serves one request at a time per model")


def rule_connections(ctx: RuleContext) -> Iterator[Finding]:
    if not 1 <= ctx.opts["maxconnections"] <= 100_000:
        yield err(f"--max-connections {ctx.opts['maxconnections']} is outside [1, 100000]", "the default is 64")
    for key, flag in (("headertimeout", "--header-timeout"), ("bodytimeout", "--body-timeout")):
        value = ctx.opts[key]
        if not (value > 0 and value <= 3600):
            yield err(f"{flag} {value} is not a number of seconds in (0, 3600]", "the defaults are 10 and 30")


def rule_passwords(ctx: RuleContext) -> Iterator[Finding]:
    for key in ("password", "adminpassword"):
        value = ctx.opts[key]
        if value is not None and not str(value).strip():
            yield err(f"--{key} is empty", f"give a non-empty secret, or leave --{key} out")


def rule_preload_story(ctx: RuleContext) -> Iterator[Finding]:
    try:
        read_story(ctx.opts["preloadstory"])
    except ConfigError as exc:
        yield err(exc.message, exc.hint)


def rule_chat_adapter(ctx: RuleContext) -> Iterator[Finding]:
    try:
        chat_adapters.load(ctx.opts["chatcompletionsadapter"] or "")
    except ConfigError as exc:
        yield err(exc.message, exc.hint)


def rule_admin_dir(ctx: RuleContext) -> Iterator[Finding]:
    if not ctx.opts["admin"]:
        return
    admin_dir = ctx.opts["admindir"]
    if not admin_dir:  # KoboldCpp turns admin mode off here too, with a warning
        yield Finding(Level.WARNING, "--admin without --admindir: admin mode stays off (it has no files to load); "
                      "give --admindir DIR to swap models at run time", fix={"admin": False})
    elif not Path(admin_dir).is_dir():
        yield err(f"--admindir {admin_dir} is not an existing directory", "create it or fix the path")


def rule_pool(ctx: RuleContext) -> Iterator[Finding]:
    o = ctx.opts
    if o["memorybudget"]:
        total = ctx.env.memory()[0]
        budget = parse_bytes(str(o["memorybudget"]), total)
        if budget is None or budget <= 0:
            yield err(f"--memory-budget {o['memorybudget']} is not an amount of memory",
                      "use bytes with a unit (8G, 512M) or a share of RAM (60%)")
        elif budget > total:
            yield Finding(Level.WARNING, f"--memory-budget {budget // 2**20} MiB is more than this machine's "
                          f"{total // 2**20} MiB of RAM")
    if o["maxmodels"] < 0:
        yield err(f"--max-models {o['maxmodels']} is negative", "0 means no cap")
    for key, flag in (("keepalive", "--keepalive"),):
        try:
            parse_duration(o[key], flag)
        except ConfigError as exc:
            yield err(exc.message, exc.hint)
    if o["loadwait"] < 0:
        yield err(f"--loadwait {o['loadwait']} is negative", "seconds a request may wait for room")
    if o["modelsdir"] and not Path(o["modelsdir"]).is_dir():
        yield err(f"--models-dir {o['modelsdir']} is not an existing directory", "create it or fix the path")
    if o["catalog"] and not Path(o["catalog"]).is_file():
        yield err(f"--catalog {o['catalog']} is not a file", "give the path of a TOML catalog file")


def rule_kvcache(ctx: RuleContext) -> Iterator[Finding]:
    o = ctx.opts
    if o["kvcachesize"] <= 0:
        yield err(f"--kvcache-size {o['kvcachesize']} is not a size", "give the MB its files may take, e.g. 2048")
    if not o["kvcachedir"]:
        if "kvcachesize" in ctx.explicit:
            yield Finding(Level.WARNING, "--kvcache-size without --kvcache-dir does nothing: KV state is kept in "
                          "memory only")
        return
    folder = Path(o["kvcachedir"])
    if folder.exists() and not folder.is_dir():
        yield err(f"--kvcache-dir {folder} is not a directory", "give a directory (it is created if missing)")
    elif not folder.exists() and not folder.parent.is_dir():
        yield err(f"--kvcache-dir {folder}: its parent {folder.parent} does not exist",
                  "create the parent, or fix the path")
    elif not os.access(folder if folder.exists() else folder.parent, os.W_OK | os.X_OK):
        yield err(f"--kvcache-dir {folder} is not writable", "give a directory this user may write to")


def rule_model_given(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.opts["nomodel"] and ctx.model_path:
        yield Finding(Level.NOTE, "--nomodel: the model is not loaded at start-up", fix={"model": []})


# -- rules that read the model file ----------------------------------------------------------------
def rule_model_file(ctx: RuleContext) -> Iterator[Finding]:
    path = ctx.model_path
    if not path or ctx.opts["nomodel"]:
        return
    try:
        ctx.gguf = read_gguf(path)
    except ModelFileError as exc:
        yield err(exc.message, exc.hint)


def rule_embeddings_model(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.opts["embeddingsmodel"]:
        try:
            read_gguf(ctx.opts["embeddingsmodel"])
        except ModelFileError as exc:
            yield err(f"--embeddingsmodel: {exc.message}", exc.hint)


def rule_context_vs_training(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.gguf and ctx.gguf.context_length and ctx.opts["contextsize"] > ctx.gguf.context_length:
        yield Finding(Level.WARNING, f"--contextsize {ctx.opts['contextsize']} is above the model's training "
                      f"context ({ctx.gguf.context_length}); quality may drop past it",
                      f"use --contextsize {ctx.gguf.context_length} or set --ropeconfig")


def rule_gpu_layers(ctx: RuleContext) -> Iterator[Finding]:
    if ctx.opts["usecpu"]:
        yield Finding(Level.NOTE, "", fix={"gpulayers": 0})
        return
    if not ctx.gguf:
        return
    # llama.cpp counts the output layer as one more offloadable layer than the repeating blocks.
    most = ctx.gguf.block_count + 1
    n = ctx.opts["gpulayers"]
    if n < -1:
        yield err(f"--gpulayers {n} is negative", "use -1 for all layers, 0 for none")
    elif n == -1:
        yield Finding(Level.NOTE, "", fix={"gpulayers": most})
    elif n > most:
        yield Finding(Level.NOTE, f"--gpulayers {n} is more than the model's {most} layers; clamped to {most}",
                      fix={"gpulayers": most})


def rule_mlock_limit(ctx: RuleContext) -> Iterator[Finding]:
    if not (ctx.opts["usemlock"] and ctx.gguf):
        return
    limit, capable = ctx.env.memlock_limit()
    if capable or limit < 0 or limit >= ctx.gguf.file_size:
        return
    yield err(f"--usemlock needs to lock {ctx.gguf.file_size // 2**20} MiB but the memlock limit (ulimit -l) is "
              f"{limit // 2**20} MiB", "raise it with `ulimit -l unlimited` (or LimitMEMLOCK= in a systemd "
              "unit), or drop --usemlock")


RULES: tuple[Rule, ...] = (
    rule_context_size, rule_batch_size, rule_default_gen_amount, rule_gen_limit, rule_threads, rule_quant_kv,
    rule_rope, rule_flash_attention, rule_mmap_mlock, rule_port, rule_multiuser, rule_request_size, rule_connections, rule_parallel,
    rule_passwords,
    rule_admin_dir, rule_pool, rule_kvcache,
    rule_model_given, rule_model_file, rule_context_vs_training, rule_gpu_layers, rule_mlock_limit,
    rule_preload_story, rule_chat_adapter, rule_embeddings_model,
)


@dataclass(frozen=True, slots=True)
class Plan:
    """A validated configuration: the settings to run with and what the user should be told."""

    server: ServerSettings
    model: ModelSettings | None
    gguf: GGUFInfo | None
    findings: tuple[Finding, ...]


DEFAULT_BUDGET_SHARE = 0.75  # of the memory available at start-up: room for the OS and other programs


def _budget(value: str, env: Environment) -> int:
    total, available = env.memory()
    if value:
        parsed = parse_bytes(str(value), total)
        assert parsed is not None  # rule_pool refused anything else
        return parsed
    return int(available * DEFAULT_BUDGET_SHARE)


def _duration(value: object) -> float:
    return parse_duration(value, "duration")


class ValidationFailed(ConfigError):
    """One or more rules failed; ``errors`` holds every error finding, in rule order."""

    def __init__(self, errors: list[Finding]) -> None:
        super().__init__(errors[0].message, hint=errors[0].hint)
        self.errors = errors


def run_rules(ctx: RuleContext, rules: Iterable[Rule] = RULES) -> list[Finding]:
    """Apply each rule in order; a rule's ``fix`` is visible to the rules after it."""
    findings: list[Finding] = []
    for rule in rules:
        for finding in rule(ctx):
            ctx.opts.update(finding.fix)
            findings.append(finding)
    return findings


def validate(opts: dict[str, Any], explicit: Iterable[str] = (), *, env: Environment | None = None,
             check_port: bool = True) -> Plan:
    """Check merged options against every rule; raise ``ValidationFailed`` listing every error."""
    ctx = RuleContext(dict(opts), frozenset(explicit), env or Environment(), check_port)
    findings = run_rules(ctx)
    errors = [f for f in findings if f.level is Level.ERROR]
    if errors:
        raise ValidationFailed(errors)
    o = ctx.opts
    server = ServerSettings(
        host=o["host"] or "127.0.0.1",
        port=o["port"],
        multiuser=o["multiuser"],
        password=o["password"],
        max_request_bytes=o["maxrequestsize"] * 1024 * 1024,
        default_gen_amount=o["defaultgenamt"],
        gen_limit=o["genlimit"],
        quiet=o["quiet"],
        debug=o["debugmode"],
        admin=o["admin"],
        admin_dir=Path(o["admindir"]) if o["admindir"] else None,
        admin_password=o["adminpassword"],
        models_dirs=tuple(Path(d).resolve() for d in (o["admindir"], o["modelsdir"]) if d and Path(d).is_dir()),
        catalog_file=Path(o["catalog"]) if o["catalog"] else None,
        memory_budget=_budget(o["memorybudget"], ctx.env),
        cluster=o["cluster"] or "",
        node_budget=str(o["memorybudget"] or ""),
        max_models=o["maxmodels"],
        keep_alive=_duration(o["keepalive"]),
        load_wait=o["loadwait"],
        warm_spare=not o["nowarmspare"],
        park=not o["nopark"],
        cors_origins=tuple(o["corsorigins"] or ()),
        max_connections=o["maxconnections"],
        header_timeout=o["headertimeout"],
        body_timeout=o["bodytimeout"],
        preload_story=read_story(o["preloadstory"]),
        chat_adapter=o["chatcompletionsadapter"] or "AutoGuess",
        embeddings_model=Path(o["embeddingsmodel"]).resolve() if o["embeddingsmodel"] else None,
        kvcache_dir=Path(o["kvcachedir"]).resolve() if o["kvcachedir"] else None,
        kvcache_bytes=o["kvcachesize"] * 2**20,
    )
    model = None
    if ctx.gguf is not None:
        rope = list(o["ropeconfig"]) + [0.0]
        scale = float(rope[0])
        model = ModelSettings(
            name=ctx.gguf.path.stem,
            path=ctx.gguf.path.resolve(),
            context_size=o["contextsize"],
            threads=o["threads"],
            batch_threads=o["blasthreads"],
            gpu_layers=o["gpulayers"],
            batch_size=o["batchsize"],
            use_mmap=not o["nommap"],
            use_mlock=o["usemlock"],
            flash_attention="on" if o["flashattention"] else "off" if o["noflashattention"] else "auto",
            quant_kv=o["quantkv"],
            parallel=o["parallelrequests"],
            context_shift=not o["noshift"],
            rope_freq_scale=scale,
            # KoboldCpp's default base (10000) means "the model's own" unless a scale is also given.
            rope_freq_base=float(rope[1]) if scale > 0 and len(o["ropeconfig"]) > 1 else 0.0,
        )
    return Plan(server, model, ctx.gguf, tuple(f for f in findings if f.message))
