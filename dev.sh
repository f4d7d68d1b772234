#!/usr/bin/env bash
# Set-up and the two everyday commands, on a machine with only Python >= 3.11 and pip:
#   ./dev.sh demo   run the main job on the bundled demo scene (local engine, no account, no network)
#   ./dev.sh test   run the test suite
# The first use creates .venv and installs the package into it; later uses reinstall only
# when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.installed

if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  echo "setting up $VENV (first use: a few minutes)..." >&2
  log=$(mktemp)
  if ! { "$PYTHON" -m venv "$VENV" \
         && "$VENV/bin/python" -m pip install --upgrade pip \
         && "$VENV/bin/python" -m pip install -e ".[test,geemap]"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "set-up failed: the full pip log is in $log" >&2
    exit 1
  fi
  rm -f "$log"
  touch "$STAMP"
fi

cmd=${1:-}
shift || true

# The browser tests drive the system's Chromium (Debian's package; no browser is downloaded).
if [ "$cmd" = test ] && ! command -v chromium >/dev/null 2>&1 && [ -z "${OPTSAR_CHROMIUM:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing Chromium for the browser tests (apt-get install chromium chromium-driver)..." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
      >/dev/null 2>&1 || echo "could not install Chromium: the browser tests will say how" >&2
  else
    echo "no Chromium here: the browser tests will fail until it is installed" \
         "(sudo apt-get install chromium chromium-driver, or set OPTSAR_CHROMIUM)" >&2
  fi
fi
case "$cmd" in
  demo) exec "$VENV/bin/optsar" demo --out out/demo "$@" ;;
  test) exec "$VENV/bin/python" -m pytest -q "$@" ;;
  lint) exec "$VENV/bin/ruff" check optsar_nb tests benchmarks "$@" ;;
  *) echo "usage: ./dev.sh demo | test | lint" >&2; exit 2 ;;
esac
