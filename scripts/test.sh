#!/usr/bin/env bash
# One command: set up (Debian packages, venv with test extras) and run the tests.
#   scripts/test.sh           every test, as CI runs it (.ci/run); sets up first, every time
#   scripts/test.sh --fast    unit tests only (-m "not integration": no real servers, no SKAB training);
#                             sets up only if never done, or if pyproject.toml changed since
# Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

fast=0
if [ "${1:-}" = "--fast" ]; then
  fast=1
  shift
fi

# Written after a successful setup; inside .venv, so a new venv starts without it.
stamp=.venv/.test-setup-done
if [ "$fast" = 1 ] && [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ ! pyproject.toml -nt "$stamp" ]; then
  # setup.sh skips Debian packages already there, but still reinstalls the venv's package
  # (seconds, and the network); the fast lane trusts a setup that nothing has changed since.
  :
else
  scripts/setup.sh --test
  touch "$stamp"
fi

if [ "$fast" = 1 ]; then
  exec .venv/bin/python -m pytest -q -ra -m "not integration" "$@"
fi
exec .venv/bin/python -m pytest -q -ra "$@"
