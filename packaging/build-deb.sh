#!/usr/bin/env bash
# Builds the edge-anomaly Debian package (architecture all): the project's wheel, the systemd
# unit, the config and the maintainer scripts; the postinst builds the venv on the gateway.
#   packaging/build-deb.sh [--version 0.1.0-1] [--out DIR]
# Default version: pyproject.toml's, revision 1. Default output: dist/.
# Needs: python3 with pip (builds the wheel), dpkg-deb.
set -euo pipefail
cd "$(dirname "$0")/.."

version=""
out=dist
while [ $# -gt 0 ]; do
  case "$1" in
    --version) version="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    *) echo "usage: $0 [--version VERSION] [--out DIR]" >&2; exit 2 ;;
  esac
done
python="${PYTHON:-python3}"
if [ -z "$version" ]; then
  version="$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')-1"
fi

stage="$(mktemp -d)"
chmod 0755 "$stage"
trap 'rm -rf "$stage"' EXIT
app="$stage/opt/edge-anomaly"
mkdir -p "$app/wheels" "$stage/DEBIAN" "$stage/etc/edge-anomaly" "$stage/lib/systemd/system" \
         "$stage/usr/share/doc/edge-anomaly"

# The project as a wheel (its dependencies come from PyPI on the gateway, pinned by constraints.txt).
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$app/wheels" . >&2
rm -rf build  # setuptools' scratch folder in the work tree
if [ -f constraints.txt ]; then
  install -m 0644 constraints.txt "$app/constraints.txt"
fi

# The config: the example with the data folder the package creates. 0640: it may hold passwords.
{
  echo "# Installed by the edge-anomaly package; your edits are kept on upgrade (dpkg conffile)."
  echo "# Check it with: /opt/edge-anomaly/venv/bin/appliance config check /etc/edge-anomaly/appliance.toml"
  sed -e 's|^data_dir = .*|data_dir = "/var/lib/edge-anomaly"   # store, outboxes, model, accounts|' \
    config/appliance.example.toml
} > "$stage/etc/edge-anomaly/appliance.toml"
grep -q '^data_dir = "/var/lib/edge-anomaly"' "$stage/etc/edge-anomaly/appliance.toml"
chmod 0640 "$stage/etc/edge-anomaly/appliance.toml"

install -m 0644 packaging/edge-anomaly.service "$stage/lib/systemd/system/edge-anomaly.service"
install -m 0644 packaging/README.md "$stage/usr/share/doc/edge-anomaly/README.md"
install -m 0755 packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm "$stage/DEBIAN/"
echo /etc/edge-anomaly/appliance.toml > "$stage/DEBIAN/conffiles"
cat > "$stage/DEBIAN/control" <<CONTROL
Package: edge-anomaly
Version: $version
Architecture: all
Maintainer: Edge anomaly appliance maintainers <root@localhost>
Depends: python3 (>= 3.11), python3-venv, adduser
Section: net
Priority: optional
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Homepage: file:///usr/share/doc/edge-anomaly/README.md
Description: industrial IoT anomaly-detection gateway, as a systemd service
 Reads sensors over MQTT or OPC-UA, scores them with an INT8 model, raises alarms
 (ISA-18.2) and, when armed, guarded PLC mitigations. Runs as the edge-anomaly
 service (Type=notify, watchdog); its Python packages are installed from PyPI
 into /opt/edge-anomaly/venv when the package is configured.
CONTROL

mkdir -p "$out"
deb="$out/edge-anomaly_${version}_all.deb"
dpkg-deb --root-owner-group --build "$stage" "$deb" >&2
echo "$deb"
