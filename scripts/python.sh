# Sourced by scripts/setup.sh and scripts/lock.sh: find an interpreter of a given Python version.

# Prints the path of an interpreter that really is Python $1 (e.g. 3.10): pyenv's newest
# $1.x, else python$1 on PATH (a pyenv shim there may refuse to run, so each is tried).
find_python() {
  local want=$1 p
  for p in $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$want".*/bin/python"$want" 2>/dev/null | sort -V -r) \
           "$(command -v "python$want" || true)"; do
    if [ -n "$p" ] && "$p" -c "import sys; sys.exit(0 if sys.version.startswith('$want.') else 1)" 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  return 1
}
