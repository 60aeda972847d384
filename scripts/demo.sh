#!/usr/bin/env bash
# One command: set up (Debian packages, venv) and run the demo: broker, simulator,
# appliance; a fault is injected and the alarm shows. Extra args go to `appliance demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/appliance demo "$@"
