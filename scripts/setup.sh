#!/usr/bin/env bash
# Installs what the appliance needs on Debian / Raspberry Pi OS (aarch64 or x86_64):
# Debian packages that are missing, then a venv with the package. Safe to re-run.
#   scripts/setup.sh            runtime (mosquitto for the demo broker)
#   scripts/setup.sh --test     plus test peers (victoria-metrics, chromium) and test extras
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[ "${1:-}" = "--test" ] && want_test=1

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

pkgs=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || pkgs+=(mosquitto)
if [ "$want_test" = 1 ]; then
  command -v victoria-metrics >/dev/null 2>&1 || [ -x /usr/bin/victoria-metrics ] || pkgs+=(victoria-metrics)
  [ -x /usr/bin/chromium ] || pkgs+=(chromium)
  [ -x /usr/sbin/debootstrap ] || pkgs+=(debootstrap)  # tests/test_service_package.py's Debian root
fi
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || pkgs+=(python3-venv)
if [ "${#pkgs[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ "$want_test" = 1 ]; then
  .venv/bin/python -m pip install -q -e '.[test,fleet]'
else
  .venv/bin/python -m pip install -q -e .
fi
