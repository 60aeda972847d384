#!/usr/bin/env bash
# One command: set up (Debian packages, venv with test extras) and run the tests.
#   scripts/test.sh                   every test, as CI runs it (.ci/run); sets up first, every time
#   scripts/test.sh --fast            unit tests only (-m "not integration": no real servers, no SKAB training);
#                                     sets up only if never done, or if pyproject.toml or constraints.txt
#                                     changed since
#   scripts/test.sh --python 3.10 ... the same on another Python (3.10-3.13), in its own venv .venv-3.10
#                                     (python3.10 on PATH, or pyenv's); combines with --fast
# Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

fast=0
version=""
while [ $# -gt 0 ]; do
  case "$1" in
    --fast) fast=1; shift ;;
    --python) version="${2:?--python needs a version such as 3.10}"; shift 2 ;;
    *) break ;;
  esac
done

venv=.venv
setup_args=(--test)
if [ -n "$version" ]; then
  venv=".venv-$version"
  setup_args+=(--python "$version")
fi

# Written after a successful setup; inside the venv, so a new venv starts without it.
stamp="$venv/.test-setup-done"
if [ "$fast" = 1 ] && [ -x "$venv/bin/python" ] && [ -f "$stamp" ] \
   && [ ! pyproject.toml -nt "$stamp" ] && [ ! constraints.txt -nt "$stamp" ]; then
  # setup.sh skips Debian packages already there, but still reinstalls the venv's package
  # (seconds, and the network); the fast lane trusts a setup that nothing has changed since.
  :
else
  scripts/setup.sh "${setup_args[@]}"
  touch "$stamp"
fi

if [ "$fast" = 1 ]; then
  exec "$venv/bin/python" -m pytest -q -ra -m "not integration" "$@"
fi
exec "$venv/bin/python" -m pytest -q -ra "$@"
