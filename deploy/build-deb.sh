#!/usr/bin/env bash
# Build covergw_<version>_<arch>.deb for gateway boxes with no internet on site.
#
#   deploy/build-deb.sh [--arch amd64|arm64|armhf|all] [OUTDIR]   (default: this machine's arch, dist/)
#
# Any machine builds every architecture: covergw is pure Python, and its
# dependencies' wheels are fetched for the target platform (pip --platform).
# The one compiled dependency is rpds-py (Rust; jsonschema -> referencing ->
# rpds-py); its project publishes manylinux wheels for x86_64, aarch64 and
# armv7l, and it has no pure-Python fallback. Everything else is pure Python.
#
# The package runs on Debian's own python3 and carries the compiled parts for
# CPython 3.11 (Debian 12), 3.12 and 3.13 (Debian 13), so one .deb serves both
# releases: Depends: python3 (>= 3.11), python3 (<< 3.14), libc6 (>= 2.17), adduser.
# Needs the package registry at build time (PyPI), nothing at install time.
# Prints the path of each package built, one per line.
set -euo pipefail
cd "$(dirname "$0")/.."
umask 022

PYTHONS=(3.11 3.12 3.13)
ARCHES=()
OUT=dist
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) shift; [ "${1:-}" = all ] && ARCHES+=(amd64 arm64 armhf) || ARCHES+=("${1:?--arch needs a value}") ;;
        --arch=*) v=${1#--arch=}; [ "$v" = all ] && ARCHES+=(amd64 arm64 armhf) || ARCHES+=("$v") ;;
        -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
        -*) echo "build-deb: unknown option $1" >&2; exit 2 ;;
        *) OUT=$1 ;;
    esac
    shift
done
[ ${#ARCHES[@]} -gt 0 ] || ARCHES=("$(dpkg --print-architecture)")
for arch in "${ARCHES[@]}"; do
    case "$arch" in amd64|arm64|armhf) ;; *) echo "build-deb: no such architecture: $arch (amd64, arm64, armhf, all)" >&2; exit 2 ;; esac
done
OUT=$(realpath -m "$OUT")

# Any CPython >= 3.11 with pip will do to fetch the wheels; the project's .venv has one.
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo /usr/bin/python3 )}
VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')
MAINTAINER=${DEB_MAINTAINER:-"covergw team <covergw@localhost>"}
# Reproducible dates: the last commit's, unless the caller sets one.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE" build' EXIT  # build/: what setuptools leaves behind

"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$STAGE/wheel" . \
    2> >(grep -v -e "^WARNING: Location" -e "Running pip as the 'root'" >&2)
WHEEL=$(ls "$STAGE"/wheel/covergw-*.whl)

build_one() {
    local arch=$1 root="$STAGE/covergw_${VERSION}_${arch}"
    local doc="$root/usr/share/doc/covergw"
    mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/usr/lib/covergw" "$root/lib/systemd/system" \
        "$root/etc/covergw" "$doc" "$root/usr/share/man/man1" "$root/usr/share/lintian/overrides"

    "$PYTHON" deploy/debian/vendor.py --project "$WHEEL" --arch "$arch" \
        $(printf -- '--python %s ' "${PYTHONS[@]}") --dest "$root/usr/lib/covergw" --copyright "$doc/copyright"
    rm -rf "$root"/usr/lib/covergw/lib*/bin

    # The launcher finds its library relative to itself, so the same tree also
    # runs when unpacked into a scratch root (that is how the tests use it).
    # -I: the box's other Python packages and PYTHON* variables cannot change what runs.
    cat > "$root/usr/bin/covergw" <<'PY'
#!/usr/bin/python3 -I
import sys
from pathlib import Path

home = Path(__file__).resolve().parent.parent / "lib" / "covergw"
own = home / f"lib-cp{sys.version_info[0]}{sys.version_info[1]}"
if not own.is_dir():
    have = ", ".join(sorted(p.name[len("lib-") :] for p in home.glob("lib-cp*")))
    sys.exit(f"covergw: this package has no build for Python {sys.version.split()[0]} (it has {have})")
sys.path[:0] = [str(own), str(home / "lib")]
from gateway.cli import main

sys.exit(main())
PY
    chmod 0755 "$root/usr/bin/covergw"

    install -m 0644 deploy/covergw.service "$root/lib/systemd/system/covergw.service"
    install -m 0644 deploy/covergw.toml "$root/etc/covergw/covergw.toml.example"
    install -m 0644 deploy/covers.example.csv "$root/etc/covergw/covers.example.csv"
    install -m 0644 README.md docs/mqtt-api.md deploy/mosquitto-acl.example deploy/network.conf.example "$doc/"
    install -m 0644 deploy/debian/lintian-overrides "$root/usr/share/lintian/overrides/covergw"
    gzip -9n < docs/covergw.1 > "$root/usr/share/man/man1/covergw.1.gz"
    {
        echo "covergw ($VERSION) unstable; urgency=medium"
        echo
        echo "  * Built from the covergw repository at $(git describe --always --dirty 2>/dev/null || echo unknown);"
        echo "    the git history there is the detailed changelog."
        echo
        echo " -- $MAINTAINER  $(date -R -u -d "@$SOURCE_DATE_EPOCH")"
    } | gzip -9n > "$doc/changelog.gz"
    chmod 0644 "$root/usr/share/man/man1/covergw.1.gz" "$doc/changelog.gz" "$doc/copyright"

    local size
    size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
    cat > "$root/DEBIAN/control" <<CONTROL
Package: covergw
Version: $VERSION
Architecture: $arch
Maintainer: $MAINTAINER
Depends: python3 (>= 3.11), python3 (<< 3.14), libc6 (>= 2.17), adduser
Installed-Size: $size
Section: net
Priority: optional
Homepage: https://localhost/covergw
Description: edge gateway for smart manhole covers
 Hears cover nodes (LoRa on a UART, NB-IoT over UDP) and RS-485 Modbus
 sensors, raises debounced alarms at the edge, keeps every reading and alarm
 on disk while the uplink is down, and forwards them over MQTT.
 .
 Carries its Python dependencies under /usr/lib/covergw and runs on
 Debian's python3.
CONTROL
    echo /etc/covergw/covergw.toml.example > "$root/DEBIAN/conffiles"
    echo /etc/covergw/covers.example.csv >> "$root/DEBIAN/conffiles"

    cat > "$root/DEBIAN/postinst" <<'SH'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    if ! getent passwd covergw >/dev/null; then
        adduser --system --group --no-create-home --home /var/lib/covergw covergw
    fi
    adduser covergw dialout >/dev/null
    # Byte-compile for the Python in place now: the unit's file system is read-only,
    # so otherwise every start on a small ARM box compiles everything again.
    python3 -m compileall -q -j 0 /usr/lib/covergw/lib \
        "/usr/lib/covergw/lib-cp$(python3 -c 'import sys; print("%d%d" % sys.version_info[:2])')" \
        >/dev/null 2>&1 || true
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null || true
        echo "covergw: put /etc/covergw/covergw.toml in place (see covergw.toml.example), allow the broker's address"
        echo "covergw: in /etc/systemd/system/covergw.service.d/network.conf (see /usr/share/doc/covergw/network.conf.example),"
        echo "covergw: then: systemctl enable --now covergw"
    fi
fi
SH
    cat > "$root/DEBIAN/prerm" <<'SH'
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
    systemctl stop covergw >/dev/null 2>&1 || true
fi
# The byte-compiled files postinst made are not dpkg's to remove.
find /usr/lib/covergw -name __pycache__ -type d -prune -exec rm -rf {} + 2>/dev/null || true
SH
    chmod 0755 "$root/DEBIAN/postinst" "$root/DEBIAN/prerm"
    (cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z \
        | xargs -0 md5sum) > "$root/DEBIAN/md5sums"

    mkdir -p "$OUT"
    dpkg-deb --root-owner-group -Zxz --build "$root" "$OUT/covergw_${VERSION}_${arch}.deb" >/dev/null
    echo "$OUT/covergw_${VERSION}_${arch}.deb"
}

for arch in "${ARCHES[@]}"; do build_one "$arch"; done
