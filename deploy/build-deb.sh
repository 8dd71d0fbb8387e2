#!/usr/bin/env bash
# Build covergw_<version>_<arch>.deb for a gateway box with no internet on site.
#
#   deploy/build-deb.sh [OUTDIR]          (default OUTDIR: dist/)
#
# The package carries covergw and every Python dependency under
# /opt/covergw/lib, so installing it fetches nothing; the box needs only
# Debian's python3 (>= 3.11). Some dependencies have compiled parts, so build
# on the box's architecture (arm64 boxes: build on an arm64 machine or in an
# arm64 container). Needs the package registry at build time, not at install.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-dist}")
# Any CPython 3.11 with pip will do to fetch the wheels; the project's .venv has one.
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo /usr/bin/python3 )}
VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
ARCH=$(dpkg --print-architecture)
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE" build' EXIT  # build/: what pip leaves behind when building from source
ROOT="$STAGE/covergw_${VERSION}_${ARCH}"

mkdir -p "$ROOT/DEBIAN" "$ROOT/usr/bin" "$ROOT/opt/covergw" "$ROOT/lib/systemd/system" \
    "$ROOT/etc/covergw" "$ROOT/usr/share/doc/covergw"
"$PYTHON" -m pip install --quiet --no-compile --no-warn-script-location --disable-pip-version-check \
    --target "$ROOT/opt/covergw/lib" . 2> >(grep -v -e "^WARNING: Location" -e "Running pip as the 'root'" >&2)
rm -rf "$ROOT/opt/covergw/lib/bin"

# The launcher finds its library relative to itself, so the same tree also
# runs when unpacked into a scratch root (that is how CI tests it).
cat > "$ROOT/usr/bin/covergw" <<'PY'
#!/usr/bin/python3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent / "opt" / "covergw" / "lib"))
from gateway.cli import main

sys.exit(main())
PY
chmod 0755 "$ROOT/usr/bin/covergw"

install -m 0644 deploy/covergw.service "$ROOT/lib/systemd/system/covergw.service"
install -m 0644 deploy/covergw.toml "$ROOT/etc/covergw/covergw.toml.example"
install -m 0644 deploy/covers.example.csv "$ROOT/etc/covergw/covers.example.csv"
install -m 0644 README.md docs/mqtt-api.md deploy/mosquitto-acl.example "$ROOT/usr/share/doc/covergw/"

SIZE=$(du -sk "$ROOT" | cut -f1)
cat > "$ROOT/DEBIAN/control" <<CONTROL
Package: covergw
Version: $VERSION
Architecture: $ARCH
Maintainer: covergw team <covergw@localhost>
Depends: python3 (>= 3.11), adduser
Installed-Size: $SIZE
Section: net
Priority: optional
Description: edge gateway for smart manhole covers
 Hears cover nodes (LoRa on a UART, NB-IoT over UDP) and RS-485 Modbus
 sensors, raises debounced alarms at the edge, keeps every reading and alarm
 on disk while the uplink is down, and forwards them over MQTT.
CONTROL

cat > "$ROOT/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd covergw >/dev/null; then
        adduser --system --group --no-create-home --home /var/lib/covergw covergw
    fi
    adduser covergw dialout >/dev/null
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
        echo "covergw: put /etc/covergw/covergw.toml in place (see covergw.toml.example), then: systemctl enable --now covergw"
    fi
fi
SH
cat > "$ROOT/DEBIAN/prerm" <<'SH'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl stop covergw >/dev/null 2>&1 || true
fi
SH
chmod 0755 "$ROOT/DEBIAN/postinst" "$ROOT/DEBIAN/prerm"

mkdir -p "$OUT"
dpkg-deb --root-owner-group --build "$ROOT" "$OUT/covergw_${VERSION}_${ARCH}.deb" >/dev/null
echo "$OUT/covergw_${VERSION}_${ARCH}.deb"
