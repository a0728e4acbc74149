"""Does the engine run here? The supervisor's side of the engine probe (``warren/worker/probe.py``).

Used by the set-up (``python -m warren.engine_build verify``, after installing) and by ``warren --check``:
both must not say "ok" on a machine where every request will crash. The probe runs in a subprocess (the
supervisor never imports ``llama_cpp``); a probe that dies by a signal is reported with the step it died
in and, where ``gdb`` is installed, the instruction it died on (the probe is run once more under gdb:
one or two seconds, on the failure path only).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from warren.default_model import default_model_path
from warren.engine_build import BUILD_RECORD
from warren.errors import ENGINE_REBUILD, describe_exit, unrunnable_cause
from warren.worker.environment import worker_environment

PROBE_TIMEOUT = 300.0  # seconds: importing, loading a small model and 8 tokens take ~1 s here


@dataclass
class EngineReport:
    ok: bool
    build: dict[str, Any] = field(default_factory=dict)  # version, system_info, gpu_offload
    decoded: int = 0
    seconds: float = 0.0
    model: str = ""
    error: str = ""
    hint: str = ""
    unrunnable: bool = False  # died of SIGILL/SIGBUS: this build cannot run on this machine
    built_with: dict[str, Any] = field(default_factory=dict)  # warren/engine_build.py's record, if any

    @property
    def features(self) -> list[str]:
        """The CPU features llama.cpp says the build uses (``AVX2 = 1``, ``AMX_INT8 = 1`` …)."""
        return re.findall(r"([A-Z0-9_]+) = 1", str(self.build.get("system_info", "")))

    def summary(self) -> str:
        b = self.build
        parts = [f"llama-cpp-python {b.get('version', '?')}"]
        if self.built_with:
            parts.append(f"built {self.built_with.get('note', '')}".strip())
        parts.append("CPU features " + (" ".join(self.features) or "unknown"))
        parts.append("GPU offload " + ("yes" if b.get("gpu_offload") else "no"))
        if self.decoded:
            parts.append(f"probe decoded {self.decoded} tokens of {self.model} in {self.seconds:.2f} s")
        return "; ".join(parts)


def _probe_command(engine: str, model: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "warren.worker.probe", "--engine", engine]
    return cmd + (["--model", str(model)] if model is not None else [])


def _lines(stdout: str) -> list[dict[str, Any]]:
    out = []
    for line in stdout.splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            continue  # native code may print to stdout too
        if isinstance(value, dict):
            out.append(value)
    return out


def locate_fault(cmd: list[str], timeout: float = 120.0) -> str:
    """Run ``cmd`` under gdb and name the instruction (and function, library) it dies on; "" if gdb is
    not there or the process did not die the same way again."""
    gdb = shutil.which("gdb")
    if gdb is None:
        return ""
    try:
        out = subprocess.run([gdb, "-q", "-nx", "-batch", "-ex", "run", "-ex", "x/i $pc", "-ex", "info symbol $pc",
                              "--args", *cmd], capture_output=True, text=True, timeout=timeout,
                             env=worker_environment(), stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = out.stdout + out.stderr
    insn = re.search(r"^=> 0x[0-9a-f]+(?: <[^>]*>)?:\s*(.+)$", text, re.M)
    if insn is None:
        return ""
    where = re.search(r"^(\S+) \+ \d+ in section \S+(?: of (\S+))?$", text, re.M)
    place = ""
    if where is not None:
        place = f" in {where.group(1)}" + (f" ({Path(where.group(2)).name})" if where.group(2) else "")
    return f"{' '.join(insn.group(1).split())}{place}"


def read_build_record() -> dict[str, Any]:
    try:
        return dict(json.loads((Path(sys.prefix) / BUILD_RECORD).read_text()))
    except (OSError, ValueError):
        return {}


def probe_engine(engine: str = "llama", model: Path | None = None, *, timeout: float = PROBE_TIMEOUT,
                 locate: bool = True) -> EngineReport:
    """Import the engine, load ``model`` (default: the embedded default model) and decode a few tokens, in a
    subprocess; say what failed, and how, if it did."""
    model = model or default_model_path()
    cmd = _probe_command(engine, model)
    name = model.name if model else ""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=worker_environment(),
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return EngineReport(False, model=name, error=f"the engine probe did not finish within {timeout:.0f} s",
                            hint="the machine may be overloaded; run it again")
    lines = _lines(done.stdout)
    build = next((ln["build"] for ln in reversed(lines) if "build" in ln), {})
    record = read_build_record() if engine == "llama" else {}
    if done.returncode == 0 and lines and lines[-1].get("ok"):
        last = lines[-1]
        return EngineReport(True, build, int(last.get("decoded", 0)), float(last.get("seconds", 0.0)), name,
                            built_with=record)
    phase = next((ln["phase"] for ln in reversed(lines) if "phase" in ln), "starting")
    cause = unrunnable_cause(done.returncode)
    error = f"the engine probe was {describe_exit(done.returncode)} while {phase}"
    if done.returncode < 0 and locate:
        fault = locate_fault(cmd)
        if fault:
            error += f", at {fault}"
    elif done.returncode > 0:
        tail = [ln for ln in done.stderr.strip().splitlines() if ln.strip()][-1:]
        if tail:
            error += f": {tail[0].strip()}"
    if cause:
        error += f": {cause.split(';')[0]}"
    hint = (f"rebuild the engine for this machine: {ENGINE_REBUILD}" if cause
            else "see the probe's output: python -m warren.worker.probe --model MODEL.gguf")
    return EngineReport(False, build, model=name, error=error, hint=hint, unrunnable=bool(cause), built_with=record)


def main(argv: list[str] | None = None) -> int:
    """``python -m warren.engine_check [--engine SPEC] [--model PATH]``: print the report; status 1 if the
    engine does not run."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m warren.engine_check")
    parser.add_argument("--engine", default="llama")
    parser.add_argument("--model", type=Path)
    args = parser.parse_args(argv)
    report = probe_engine(args.engine, args.model)
    if report.ok:
        print(f"engine ok: {report.summary()}")
        return 0
    print(f"error: {report.error}", file=sys.stderr)
    if report.hint:
        print(f"hint: {report.hint}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    raise SystemExit(main())
