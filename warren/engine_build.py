"""Build llama-cpp-python for the machine it will run on, keep the wheel, and prove it runs.

Why this exists: llama-cpp-python compiles llama.cpp from source with ``-march=native``. That is fast
(AVX-512 where there is AVX-512), but "native" is what the CPU *advertises*, and the machines here do not
all keep their promises: on an Intel Xeon VM that advertises AMX, ggml's AMX kernels died with SIGILL
(``tilezero``) at the first decode although the kernel granted the AMX permission. And pip caches a
built wheel by its source, not by the CPU it was built for, so a wheel built on one machine is silently
reused on another.

So the engine is built here, not by pip's resolver:

1. **Variant.** ``native`` (``-march=native``) is tried first. Before it is built, the instruction
   families a native build would use and that are known to be advertised without working (AMX) are
   *run* in a 20-line C program; a family that faults is compiled out (``-mno-amx-*``). If the native
   build still dies in the probe (step 3) with SIGILL or SIGBUS, the ``portable`` variant is built:
   ``GGML_NATIVE=OFF`` with only SSE4.2/AVX/AVX2/FMA/F16C/BMI2 (those this CPU has), and the native one
   is marked as failed for this CPU so it is not tried again.
2. **Key.** Each wheel is kept in ``~/.cache/warren/engines/<key>/`` (``WARREN_ENGINE_CACHE`` moves it),
   where the key hashes the engine's pinned requirement, the Python ABI, the variant's CMake arguments
   (with the user's ``CMAKE_ARGS``) and the instruction sets ``-march=native`` means to this compiler on
   this CPU. Another CPU, compiler or flag is another key, so a foreign build is never picked up; pip's
   own wheel cache is bypassed (``--no-cache-dir``).
3. **Probe.** After installing, ``verify`` loads the default model in a subprocess and decodes a few
   tokens (``warren/engine_check.py``); the set-up reports success only if that works.

Entry points (``dev.sh`` calls them): ``python -m warren.engine_build install | verify | forget | key``.
Only the standard library is used: ``install`` runs before warren's own dependencies are installed.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENGINE = "llama-cpp-python"
NATIVE, PORTABLE = "native", "portable"
BUILD_RECORD = "warren-engine-build.json"  # how the installed engine was built, in the venv (sys.prefix)
FAILED_MARK = "FAILED"  # in a native wheel's folder: it was built and died in the probe on this CPU
AMX_FLAGS = ("amx-tile", "amx-int8", "amx-bf16", "amx-fp16", "amx-complex")
# The portable variant: x86-64-v3's SIMD, each only where /proc/cpuinfo lists it (cpuinfo name, ggml option).
PORTABLE_FEATURES = (("sse4_2", "GGML_SSE42"), ("avx", "GGML_AVX"), ("avx2", "GGML_AVX2"), ("fma", "GGML_FMA"),
                     ("f16c", "GGML_F16C"), ("bmi2", "GGML_BMI2"))

# Runs one tile instruction of each AMX family after asking the kernel for the tile state, as ggml does.
AMX_PROBE_C = r"""
#include <immintrin.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
struct tile_config { unsigned char palette, start_row, reserved[14]; unsigned short colsb[16]; unsigned char rows[16]; };
int main(void) {
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0) return 3;
    struct tile_config cfg __attribute__((aligned(64)));
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 3; i++) { cfg.rows[i] = 16; cfg.colsb[i] = 64; }
    _tile_loadconfig(&cfg);
    _tile_zero(0); _tile_zero(1); _tile_zero(2);
    _tile_dpbssd(2, 0, 1);
    _tile_dpbf16ps(2, 0, 1);
    _tile_release();
    return 0;
}
"""


class SetupError(Exception):
    """A set-up step failed; the message is one line for the user, the hint says what to do."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def engine_requirement() -> str:
    """The pinned ``llama-cpp-python==X`` from pyproject.toml: one definition of the engine's version."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        deps = tomllib.load(f)["project"]["dependencies"]
    for dep in deps:
        if dep.replace("_", "-").lower().startswith(ENGINE):
            return str(dep)
    raise SetupError(f"pyproject.toml does not list {ENGINE}")


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def compiler() -> str:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or "cc"


@functools.cache
def native_target() -> str:
    """What ``-march=native`` expands to for this compiler on this CPU (the driver's cc1 line): the
    instruction sets a native build will use. Empty where the compiler cannot say."""
    try:
        out = subprocess.run([compiler(), "-march=native", "-###", "-E", "-x", "c", os.devnull],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    for line in out.stderr.splitlines():
        if "cc1" in line:
            return " ".join(w.strip('"') for w in line.split() if w.strip('"').startswith(("-m", "-march")))
    return ""


def compiler_accepts(flag: str) -> bool:
    try:
        return subprocess.run([compiler(), flag, "-E", "-x", "c", os.devnull], capture_output=True,
                              timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def amx_runs() -> tuple[bool, str]:
    """Whether this CPU runs AMX tile instructions (compiled and run, not read from /proc/cpuinfo)."""
    with tempfile.TemporaryDirectory(prefix="warren-amx-") as tmp:
        src, exe = Path(tmp) / "amx.c", Path(tmp) / "amx"
        src.write_text(AMX_PROBE_C)
        built = subprocess.run([compiler(), "-O0", "-mamx-tile", "-mamx-int8", "-mamx-bf16", str(src), "-o", str(exe)],
                               capture_output=True, text=True, timeout=120)
        if built.returncode != 0:
            return False, "the compiler cannot build AMX code"
        ran = subprocess.run([str(exe)], capture_output=True, timeout=30)
    if ran.returncode == 0:
        return True, "AMX tile instructions run"
    if ran.returncode < 0:
        return False, f"AMX is advertised but its tile instructions die with signal {-ran.returncode}"
    return False, f"the kernel refuses the AMX tile state (status {ran.returncode})"


@dataclass(frozen=True)
class Variant:
    name: str
    cmake_args: str
    note: str  # why these flags, for the user and build.json


def choose_variant(name: str) -> Variant:
    user = os.environ.get("CMAKE_ARGS", "").strip()
    flags = cpu_flags()
    if name == PORTABLE:
        opts = ["-DGGML_NATIVE=OFF"] + [f"-D{opt}={'ON' if feat in flags else 'OFF'}" for feat, opt in PORTABLE_FEATURES]
        enabled = [feat for feat, _ in PORTABLE_FEATURES if feat in flags]
        return Variant(PORTABLE, " ".join([user, *opts]).strip(), "portable: " + (", ".join(enabled) or "no SIMD"))
    note, cflags = "native (-march=native)", []
    if "amx_tile" in flags:
        works, why = amx_runs()
        if not works:
            cflags = [f"-mno-{f}" for f in AMX_FLAGS if compiler_accepts(f"-mno-{f}")]
            note += f", AMX compiled out: {why}"
        else:
            note += f", AMX kept: {why}"
    opts = ["-DGGML_NATIVE=ON"]
    if cflags:
        joined = " ".join(cflags)
        opts += [f"-DCMAKE_C_FLAGS={joined}", f"-DCMAKE_CXX_FLAGS={joined}"]
    return Variant(NATIVE, " ".join([user, *(shlex.quote(o) for o in opts)]).strip(), note)


def cache_root() -> Path:
    env = os.environ.get("WARREN_ENGINE_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "warren" / "engines"


@functools.cache
def machine_key() -> str:
    """What decides whether a build fits this machine: the engine's version, the Python ABI, the
    instruction sets ``-march=native`` means here, the compiler and the user's ``CMAKE_ARGS``."""
    ident = {"engine": engine_requirement(), "python": f"{sys.implementation.cache_tag}-{platform.machine()}",
             "target": native_target(), "compiler": compiler(), "cmake_args": os.environ.get("CMAKE_ARGS", "").strip()}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def folder(variant_name: str) -> Path:
    return cache_root() / machine_key() / variant_name


def cached_wheel(variant_name: str) -> Path | None:
    wheels = sorted(folder(variant_name).glob("*.whl"))
    return wheels[0] if wheels else None


def build(variant: Variant) -> Path:
    """Compile the engine's wheel for ``variant`` into its keyed folder (atomically: an interrupted build
    leaves nothing behind)."""
    target = folder(variant.name)
    say(f"building {engine_requirement()} for this CPU ({variant.note}): this compiles llama.cpp, "
        "5-8 minutes on 2 cores...")
    started = time.monotonic()
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".building-", dir=target.parent)
    try:
        env = {**os.environ, "CMAKE_ARGS": variant.cmake_args,
               "CMAKE_BUILD_PARALLEL_LEVEL": str(os.cpu_count() or 2)}
        cmd = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-cache-dir", "--no-binary", ENGINE,
               engine_requirement(), "-w", tmp]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            tail = "\n".join(done.stderr.strip().splitlines()[-25:])
            raise SetupError(f"compiling {engine_requirement()} failed (CMAKE_ARGS={variant.cmake_args}):\n{tail}",
                             "a C/C++ compiler and cmake are needed (Debian: apt-get install build-essential cmake)")
        minutes = (time.monotonic() - started) / 60
        (Path(tmp) / "build.json").write_text(json.dumps({
            "variant": variant.name, "note": variant.note, "cmake_args": variant.cmake_args,
            "target": native_target(), "cpu": cpu_model(), "built": time.strftime("%Y-%m-%d %H:%M:%S"),
            "minutes": round(minutes, 1)}, indent=1) + "\n")
        shutil.rmtree(target, ignore_errors=True)
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"built in {minutes:.1f} minutes; kept in {target}")
    wheel = cached_wheel(variant.name)
    assert wheel is not None
    return wheel


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def install_wheel(wheel: Path) -> None:
    """Install exactly this wheel (replacing whatever engine is there), then its dependencies."""
    for extra in (["--force-reinstall", "--no-deps"], []):
        done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", *extra, str(wheel)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise SetupError(f"installing {wheel.name} failed: " + " ".join(done.stderr.strip().splitlines()[-1:]))
    record = wheel.parent / "build.json"
    if record.exists():
        shutil.copyfile(record, Path(sys.prefix) / BUILD_RECORD)


def current_variant_name() -> str:
    """Native, unless a native build already died in the probe on this machine."""
    return PORTABLE if (folder(NATIVE) / FAILED_MARK).exists() else NATIVE


def install(name: str | None = None) -> None:
    name = name or current_variant_name()
    wheel = cached_wheel(name)
    if wheel is None:
        wheel = build(choose_variant(name))
    else:
        say(f"using the engine built for this machine earlier: {wheel.parent}")
    install_wheel(wheel)


def verify(engine: str = "llama") -> None:
    """Probe the installed engine; if a native build cannot run here, build the portable one and probe
    again. Raises ``SetupError`` with one line and a hint when nothing runs. ``engine``: tests name a
    fake one that dies the way a foreign build does."""
    from warren.engine_check import probe_engine  # imported here: ``install`` runs before warren is installed

    report = probe_engine(engine)
    if not report.ok and report.unrunnable and engine == "llama" and current_variant_name() == NATIVE:
        say(f"the native engine build cannot run on this machine: {report.error}")
        say("building the portable variant instead (kept for this machine; ./dev.sh rebuild-engine forgets it)")
        folder(NATIVE).mkdir(parents=True, exist_ok=True)
        (folder(NATIVE) / FAILED_MARK).write_text(report.error + "\n")
        install(PORTABLE)
        report = probe_engine(engine)
    if not report.ok:
        raise SetupError(f"the llama.cpp engine does not run on this machine: {report.error}",
                         report.hint or "run ./dev.sh rebuild-engine (see the README, 'The engine')")
    say(f"engine ok: {report.summary()}")


def forget() -> None:
    """Drop this machine's builds (and a failed-native mark): the next ``install`` compiles again."""
    shutil.rmtree(cache_root() / machine_key(), ignore_errors=True)
    say(f"forgot the engine builds for this machine ({cache_root() / machine_key()})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m warren.engine_build", description=__doc__.split("\n")[0])
    parser.add_argument("step", choices=["install", "verify", "forget", "key"])
    parser.add_argument("--engine", default="llama", help="verify: the engine to probe (tests name fakes)")
    args = parser.parse_args(argv)
    try:
        if args.step == "key":
            print(f"{machine_key()}-{current_variant_name()}")
        elif args.step == "install":
            install()
        elif args.step == "forget":
            forget()
        else:
            verify(args.engine)
    except SetupError as exc:
        say(f"error: {exc.message}")
        if exc.hint:
            say(f"hint: {exc.hint}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
