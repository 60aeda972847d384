#!/usr/bin/env bash
# Installs what the appliance needs on Debian / Raspberry Pi OS / Ubuntu (aarch64 or x86_64):
# Debian packages that are missing, then a venv with the package, at the versions constraints.txt
# pins (every gateway of a release runs the same onnxruntime, numpy, cryptography). Safe to re-run.
#   scripts/setup.sh                 runtime (mosquitto for the demo broker), in .venv with python3
#   scripts/setup.sh --test          plus test peers (victoria-metrics, chromium) and test extras
#   scripts/setup.sh --python 3.10   the venv .venv-3.10 with Python 3.10 instead (python3.10 on PATH,
#                                    or pyenv's); for testing another supported Python (3.10-3.13)
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
version=""
while [ $# -gt 0 ]; do
  case "$1" in
    --test) want_test=1 ;;
    --python) version="${2:?--python needs a version such as 3.10}"; shift ;;
    *) echo "setup: unknown argument $1 (expected --test, --python X.Y)" >&2; exit 2 ;;
  esac
  shift
done

source scripts/python.sh  # find_python

if [ -n "$version" ]; then
  python=$(find_python "$version") || { echo "setup: no Python $version found (PATH or pyenv)" >&2; exit 1; }
  venv=".venv-$version"
else
  python=python3
  venv=.venv
fi

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"

pkgs=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || pkgs+=(mosquitto)
if [ "$want_test" = 1 ]; then
  command -v victoria-metrics >/dev/null 2>&1 || [ -x /usr/bin/victoria-metrics ] || pkgs+=(victoria-metrics)
  [ -x /usr/bin/chromium ] || pkgs+=(chromium)
  [ -x /usr/sbin/debootstrap ] || pkgs+=(debootstrap)  # tests/test_service_package.py's Debian root
  command -v node >/dev/null 2>&1 || pkgs+=(nodejs)  # Eclipse Tahu, the Sparkplug B peer (rigs/tahu)
  command -v npm >/dev/null 2>&1 || pkgs+=(npm)
fi
"$python" -c 'import venv, ensurepip' >/dev/null 2>&1 || pkgs+=(python3-venv)
if [ "${#pkgs[@]}" -gt 0 ]; then
  echo "setup: installing Debian packages: ${pkgs[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
# -c: the release's pinned versions (markers choose per Python); pyproject.toml keeps the ranges.
if [ "$want_test" = 1 ]; then
  "$venv/bin/python" -m pip install -q -c constraints.txt -e '.[test,fleet]'
else
  "$venv/bin/python" -m pip install -q -c constraints.txt -e .
fi
if [ "$want_test" = 1 ] && [ ! -f rigs/tahu/node_modules/sparkplug-client/package.json ]; then
  # Tahu's sparkplug-client and sparkplug-payload at the lockfile's versions; offline afterwards.
  (cd rigs/tahu && npm ci --no-audit --no-fund --silent)
fi
