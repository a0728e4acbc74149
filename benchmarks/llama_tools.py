"""llama.cpp's own tools (``llama-bench``, ``llama-batched-bench``, ``llama-server``), built for a benchmark run
from the llama.cpp sources vendored in the pinned llama-cpp-python sdist, so warren is compared with the very
llama.cpp it runs, compiled the way warren's engine is (``warren/engine_build.py``: native, AMX compiled out
where it faults).

Run:  .venv/bin/python benchmarks/llama_tools.py      # builds (about 10 minutes on 2 cores) and prints the folder

Kept in ``~/.cache/warren/llama-tools/<machine key>/`` (next to the engine's wheels), never in the repository.
``WARREN_LLAMA_TOOLS=/path/to/bin`` uses tools built elsewhere instead.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from warren import engine_build  # noqa: E402

TOOLS = ("llama-bench", "llama-batched-bench", "llama-server")


def tools_dir() -> Path:
    """The folder holding the tools, built first if need be."""
    given = os.environ.get("WARREN_LLAMA_TOOLS")
    if given:
        return Path(given)
    target = engine_build.cache_root().parent / "llama-tools" / engine_build.machine_key()
    if all((target / "bin" / t).exists() for t in TOOLS):
        return target / "bin"
    build(target)
    return target / "bin"


def build(target: Path) -> None:
    variant = engine_build.choose_variant(engine_build.NATIVE)
    engine_build.say(f"building llama.cpp's tools from {engine_build.engine_requirement()}'s sources "
                     f"({variant.note}); about 10 minutes on 2 cores...")
    work = Path(tempfile.mkdtemp(prefix="llama-tools-"))
    try:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        engine_build.engine_requirement(), "-d", str(work)], check=True)
        (sdist,) = work.glob("*.tar.gz")
        with tarfile.open(sdist) as tar:
            tar.extractall(work, filter="data")
        (source,) = work.glob("*/vendor/llama.cpp")
        build_dir = work / "build"
        args = ["cmake", "-S", str(source), "-B", str(build_dir), "-DCMAKE_BUILD_TYPE=Release",
                "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DBUILD_SHARED_LIBS=OFF", *shlex.split(variant.cmake_args)]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", str(build_dir), "-j", str(os.cpu_count() or 2), "--target", *TOOLS],
                       check=True, stdout=subprocess.DEVNULL)
        staged = target.with_name(target.name + ".building")
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(build_dir / "bin", staged / "bin", symlinks=True)
        shutil.rmtree(target, ignore_errors=True)
        staged.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    print(tools_dir())
