#!/usr/bin/env bash
# One command: set up (Debian packages, venv with test extras) and run every test.
# Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
exec .venv/bin/python -m pytest -q -ra "$@"
