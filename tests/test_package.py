"""The .deb as a box gets it: built here for every architecture, installed with apt, run.

The quick tests unpack this machine's package into a scratch root and run it on
Debian's python3. The slow ones (``-m slow``, ``./dev package-test``) install it
with ``apt install ./covergw_*.deb`` into bare Debian 12 and 13 roots made by
debootstrap, run ``check-config`` and the daemon there against a Mosquitto on
the host (a chroot shares the host's network), and run the arm64 and armhf
packages under qemu-user. They run only when asked, ``COVERGW_SLOW_TESTS=1``
(what ``./dev package-test`` sets), so the suite stays minutes long; the cache
is made on first use (minutes, from Debian's mirror) under
``$COVERGW_CACHE_DIR`` (default ``~/.cache/covergw``) and reused after.
"""

from __future__ import annotations

import asyncio
import fcntl
import gzip
import os
import re
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from tests.harness import Broker, Collector, free_udp_port
from tests.vectors import VECTORS, vector

ROOT = Path(__file__).resolve().parent.parent
CLEAN_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}
HOME = "usr/lib/covergw"
REGISTRY = "cover_id,owner_unit,node_id\nHZ-0001,drainage,00C0FFEE\n"
DEPENDS = "python3 (>= 3.11), python3 (<< 3.14), libc6 (>= 2.17), adduser"

pytestmark = pytest.mark.skipif(
    not (shutil.which("dpkg-deb") and Path("/usr/bin/python3").exists()),
    reason="needs Debian's dpkg-deb and python3",
)


def build(out: Path, *arches: str) -> dict[str, Path]:
    built = subprocess.run(
        [str(ROOT / "deploy" / "build-deb.sh"), *(f"--arch={a}" for a in arches), str(out)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert built.returncode == 0, built.stderr
    debs = [Path(line) for line in built.stdout.split()]
    return {deb.stem.rsplit("_", 1)[-1]: deb for deb in debs}


def host_arch() -> str:
    if shutil.which("dpkg") is None:
        return "unknown"  # not Debian: every test here skips
    return subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture(scope="module")
def host_deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("dist"), host_arch())[host_arch()]


@pytest.fixture(scope="module")
def scratch(host_deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("scratch-root")
    subprocess.run(["dpkg-deb", "-x", str(host_deb), str(root)], check=True)
    return root


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(root / "usr" / "bin" / "covergw"), *args],
        capture_output=True,
        text=True,
        env=CLEAN_ENV,
        check=False,
    )


def test_unpacked_package_runs_with_nothing_but_debian_python(scratch: Path) -> None:
    version = run(scratch, "--version")
    assert version.returncode == 0, version.stderr
    decoded = run(scratch, "decode", VECTORS["boot"])
    assert '"node": "1234ABCD"' in decoded.stdout
    # Debian's python3 has no covergw of its own: only the vendored copy can have run.
    assert decoded.returncode == 0


def test_package_ships_unit_config_and_docs(scratch: Path, tmp_path: Path) -> None:
    assert (scratch / "lib/systemd/system/covergw.service").is_file()
    assert (scratch / "usr/share/doc/covergw/mqtt-api.md").is_file()
    assert (scratch / HOME / "lib/gateway/schemas/command.schema.json").is_file()
    example = (scratch / "etc/covergw/covergw.toml.example").read_text()
    config = tmp_path / "covergw.toml"
    config.write_text(
        example.replace("enabled = true", "enabled = false")
        .replace('password_file = "/etc/covergw/mqtt-password"', "")
        .replace(
            'registry = "covers.csv"', f'registry = "{scratch}/etc/covergw/covers.example.csv"'
        )
    )
    checked = run(scratch, "check-config", str(config))
    assert checked.returncode == 0, checked.stderr
    assert "6 covers" in checked.stdout


def test_control_fields_resolve_with_apt(host_deb: Path) -> None:
    def field(name: str) -> str:
        return subprocess.run(
            ["dpkg-deb", "--field", str(host_deb), name], capture_output=True, text=True, check=True
        ).stdout.strip()

    assert field("Depends") == DEPENDS
    assert field("Architecture") == host_arch()
    assert host_deb.name == f"covergw_{field('Version')}_{host_arch()}.deb"


def test_copyright_names_every_vendored_distribution_and_its_licence(scratch: Path) -> None:
    text = (scratch / "usr/share/doc/covergw/copyright").read_text(encoding="utf-8")
    assert text.startswith(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
    )
    paragraphs = text.split("\n\n")
    vendored = sorted((scratch / HOME).glob("lib*/*.dist-info"))
    assert len(vendored) >= 10  # covergw, jsonschema and its tree, aiomqtt, paho, pymodbus ...
    for dist_info in vendored:
        name, version = dist_info.name.removesuffix(".dist-info").split("-")
        if name == "covergw":
            continue
        # The paragraph for it names its files and a licence.
        own = [p for p in paragraphs if f"/{dist_info.name}/*" in p]
        assert len(own) == 1, dist_info.name
        assert re.search(r"^License: \S", own[0], re.MULTILINE), own[0]
        assert version in own[0]
    # Every licence named in a Files paragraph has its own License paragraph.
    named = {
        part.strip("()")
        for p in paragraphs
        if p.startswith("Files:") and "License: covergw" not in p
        for part in re.search(r"^License: (.*)$", p, re.MULTILINE).group(1).split()  # type: ignore[union-attr]
        if part not in {"AND", "OR", "WITH"}
    }
    standalone = {p.split("\n", 1)[0].removeprefix("License: ") for p in paragraphs}
    assert named <= standalone


def test_man_page_and_changelog(scratch: Path, tmp_path: Path) -> None:
    page = scratch / "usr/share/man/man1/covergw.1.gz"
    with gzip.open(page, "rt") as f:
        source = f.read()
    assert source.splitlines()[2].startswith(".TH COVERGW 1")
    unit = (scratch / "lib/systemd/system/covergw.service").read_text()
    assert "Documentation=man:covergw(1)" in unit
    with gzip.open(scratch / "usr/share/doc/covergw/changelog.gz", "rt") as f:
        assert f.readline().startswith("covergw (")
    if shutil.which("man"):
        shown = subprocess.run(
            ["man", "-l", str(page)],
            capture_output=True,
            text=True,
            env={**CLEAN_ENV, "MANPAGER": "cat", "MANWIDTH": "80"},
            check=False,
        )
        assert shown.returncode == 0, shown.stderr
        assert "covergw - edge gateway for smart manhole covers" in shown.stdout


def test_launcher_refuses_a_python_it_has_no_build_for(scratch: Path, tmp_path: Path) -> None:
    """Debian 14's python3 (3.14, say) must get one line, not an ImportError from rpds."""
    tree = tmp_path / "tree"
    shutil.copytree(scratch / "usr/bin", tree / "usr/bin")
    (tree / HOME / "lib").mkdir(parents=True)
    (tree / HOME / "lib-cp30").mkdir()
    done = run(tree, "--version")
    assert done.returncode == 1
    assert done.stderr.startswith("covergw: this package has no build for Python 3.")
    assert "(it has cp30)" in done.stderr
    assert "Traceback" not in done.stderr


# --- slow: a real install into a bare Debian root, and the arm64 package under qemu ---

CACHE = Path(os.environ.get("COVERGW_CACHE_DIR", Path.home() / ".cache" / "covergw"))
MIRROR = os.environ.get("COVERGW_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SLOW_WANTED = os.environ.get("COVERGW_SLOW_TESTS") == "1"


# The boxes' releases and the python3 each has: the package carries a build for both.
RELEASES = {"bookworm": "3.11", "trixie": "3.13"}


def base_root(release: str) -> Path:
    """A bare Debian of this machine's architecture, as debootstrap left it."""
    return CACHE / f"debian-{release}-{host_arch()}"


# The boxes' ARM architectures and the qemu-user that runs each.
QEMU = {"arm64": "qemu-aarch64-static", "armhf": "qemu-arm-static"}


def arm_root(arch: str) -> Path:
    """An ARM Debian 12 with python3, unpacked (not configured): enough for qemu-user."""
    return CACHE / f"debian-bookworm-{arch}-unpacked"


def slow(cache: Path) -> pytest.MarkDecorator:
    """Run when asked for (COVERGW_SLOW_TESTS=1); otherwise skip, saying how to run it."""
    return pytest.mark.skipif(
        not SLOW_WANTED,
        reason=f"slow (a Debian root at {cache}, minutes): ./dev package-test runs it",
    )


def needs_root_and_debootstrap() -> None:
    if os.geteuid() != 0:
        pytest.skip("debootstrap and chroot need root")
    if not shutil.which("debootstrap"):
        pytest.skip("debootstrap is not installed (./dev package-test installs it)")


def cached(target: Path, make: list[list[str]]) -> Path:
    """Make ``target`` once (commands see ``{}`` as the directory), atomically.

    Several checkouts may run the suite at once: a lock keeps them from making
    the same root together, and the rename means a half-made root never counts.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / f"{target.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_dir():
            return target
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        for command in make:
            done = subprocess.run(
                [arg.replace("{}", str(partial)) for arg in command],
                capture_output=True,
                text=True,
                check=False,
            )
            assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
        partial.rename(target)
    return target


@pytest.fixture
def debian(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Path]:
    """A private copy of the cached bare Debian root (the cache stays pristine)."""
    needs_root_and_debootstrap()
    release = request.param
    base = cached(
        base_root(release),
        [["debootstrap", "--variant=minbase", release, "{}", MIRROR]],
    )
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", str(base), str(root)], check=True)
    yield root
    remove(root)


def remove(root: Path) -> None:
    """A Debian root is ~300 MB: not for pytest to keep three runs of."""
    subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)


def in_root(root: Path, *args: str, user: str | None = None) -> list[str]:
    return ["chroot", *([f"--userspec={user}:{user}"] if user else []), str(root), *args]


def write_config(root: Path, broker_port: int, udp_port: int) -> None:
    (root / "etc/covergw/covers.csv").write_text(REGISTRY, encoding="utf-8")
    (root / "etc/covergw/covergw.toml").write_text(
        f"""
[gateway]
id = "gw-pkg"
state_dir = "/var/lib/covergw"
registry = "covers.csv"

[uplink]
host = "127.0.0.1"
port = {broker_port}
stats_interval_s = 1
reconnect_min_s = 0.1
reconnect_max_s = 0.5

[queue]
flush_interval_s = 0.05

[[udp]]
name = "nbiot"
bind = "127.0.0.1:{udp_port}"
""",
        encoding="utf-8",
    )


def daemon_reaches_broker(root: Path, covergw: list[str], *, start_s: float) -> None:
    """check-config, then the daemon: a frame sent over UDP from the host reaches the broker."""
    with Broker(root.parent / "broker") as broker:
        udp_port = free_udp_port()
        write_config(root, broker.port, udp_port)
        checked = subprocess.run(
            [*covergw, "check-config", "/etc/covergw/covergw.toml"],
            capture_output=True,
            text=True,
            env=CLEAN_ENV,
            check=False,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "1 covers" in checked.stdout, checked.stdout
        log = root.parent / "daemon.log"
        with log.open("wb") as stderr:
            asyncio.run(run_and_watch(covergw, broker.port, udp_port, start_s, stderr))
        assert "Traceback" not in log.read_text(errors="replace")


async def run_and_watch(
    covergw: list[str], broker_port: int, udp_port: int, start_s: float, stderr: BinaryIO
) -> None:
    async with Collector(broker_port) as collector:
        proc = await asyncio.create_subprocess_exec(
            *covergw,
            "run",
            "--config",
            "/etc/covergw/covergw.toml",
            env=CLEAN_ENV,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
        try:

            def covered() -> bool:
                return any(
                    (r.get("cover") or {}).get("cover_id") == "HZ-0001"
                    for r in collector.readings()
                )

            # The port opens some time after the process starts (seconds under
            # qemu): send until the broker has the reading. A repeat is a
            # duplicate, which the gateway drops.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                async with asyncio.timeout(start_s):
                    while not covered():
                        assert proc.returncode is None, "the daemon exited"
                        sock.sendto(vector("report"), ("127.0.0.1", udp_port))
                        try:
                            await collector.wait_for(covered, timeout=1.0)
                        except TimeoutError:
                            continue
            online = [
                m.payload
                for m in collector.messages
                if m.topic == "covers/gw-pkg/status" and m.payload.get("state") == "online"
            ]
            assert online, [m.topic for m in collector.messages]
            assert collector.errors == []
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(30):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise
        assert proc.returncode == 0, f"exit {proc.returncode}; see {stderr.name}"


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "debian",
    [pytest.param(release, marks=slow(base_root(release)), id=release) for release in RELEASES],
    indirect=True,
)
def test_apt_install_into_bare_debian_then_run(host_deb: Path, debian: Path) -> None:
    """What an operator does on a new box: apt install ./covergw_<v>_<arch>.deb, then run it.

    On Debian 12 and 13 both, so each Python's compiled parts are the ones that run.
    """
    shutil.copy(host_deb, debian / "tmp")
    apt = subprocess.run(
        in_root(
            debian,
            "sh",
            "-c",
            f"cd /tmp && apt-get update -qq && apt-get install -y -q ./{host_deb.name}",
        ),
        capture_output=True,
        text=True,
        env={**CLEAN_ENV, "DEBIAN_FRONTEND": "noninteractive"},
        check=False,
    )
    assert apt.returncode == 0, apt.stdout[-3000:] + apt.stderr[-3000:]
    # apt pulled python3 and adduser from the mirror, and postinst made the user.
    assert "python3" in apt.stdout
    python = subprocess.run(
        in_root(debian, "python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    release = (debian / "etc/os-release").read_text()
    assert python == RELEASES[re.search(r"^VERSION_CODENAME=(\w+)", release, re.M).group(1)]  # type: ignore[union-attr]
    assert re.search(r"^covergw:.*:/var/lib/covergw:", (debian / "etc/passwd").read_text(), re.M)
    assert (debian / "usr/share/man/man1/covergw.1.gz").is_file()
    # The unit's StateDirectory= would make this for the service user.
    subprocess.run(
        in_root(
            debian,
            "install",
            "-d",
            "-o",
            "covergw",
            "-g",
            "covergw",
            "-m",
            "0750",
            "/var/lib/covergw",
        ),
        check=True,
    )
    # postinst byte-compiled for the python3 in place (the unit's /usr is read-only).
    assert list(
        (debian / HOME / "lib/gateway/__pycache__").glob(
            f"cli.cpython-{python.replace('.', '')}.pyc"
        )
    )
    daemon_reaches_broker(debian, in_root(debian, "/usr/bin/covergw", user="covergw"), start_s=60)
    # Removing it leaves nothing behind in /usr, compiled files included.
    purge = subprocess.run(
        in_root(debian, "apt-get", "purge", "-y", "-q", "covergw"),
        capture_output=True,
        text=True,
        env={**CLEAN_ENV, "DEBIAN_FRONTEND": "noninteractive"},
        check=False,
    )
    assert purge.returncode == 0, purge.stdout + purge.stderr
    # (/etc/covergw keeps the operator's own files; that is dpkg's rule, and right.)
    assert f"/{HOME}" not in purge.stdout + purge.stderr
    assert not (debian / HOME).exists()
    assert not (debian / "usr/bin/covergw").exists()


@pytest.fixture(scope="module")
def arm_debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build(tmp_path_factory.mktemp("dist-arm"), "arm64", "armhf")


ELF_MACHINE = {
    "arm64": "ELF 64-bit LSB shared object, ARM aarch64",
    "armhf": "ELF 32-bit LSB shared object, ARM, EABI5",
}


@pytest.mark.slow
@slow(base_root("bookworm"))
@pytest.mark.skipif(shutil.which("file") is None, reason="needs file(1)")
def test_arm_packages_carry_arm_binaries_only(arm_debs: dict[str, Path], tmp_path: Path) -> None:
    """Built on x86, each ARM package's compiled parts are for its box, one per CPython."""
    for arch, machine in ELF_MACHINE.items():
        tree = tmp_path / arch
        subprocess.run(["dpkg-deb", "-x", str(arm_debs[arch]), str(tree)], check=True)
        objects = sorted(tree.rglob("*.so"))
        assert {o.parent.parent.name for o in objects} == {"lib-cp311", "lib-cp312", "lib-cp313"}
        for obj in objects:
            kind = subprocess.run(
                ["file", "-b", str(obj)], capture_output=True, text=True, check=True
            ).stdout
            assert kind.startswith(machine), f"{obj}: {kind}"
        arch_field = subprocess.run(
            ["dpkg-deb", "--field", str(arm_debs[arch]), "Architecture"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        assert arch_field == arch


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    "arch", [pytest.param(arch, marks=slow(arm_root(arch)), id=arch) for arch in QEMU]
)
def test_arm_package_runs_under_qemu(arch: str, arm_debs: dict[str, Path], tmp_path: Path) -> None:
    """The ARM package on that ARM Debian's python3, emulated: check-config, then the daemon."""
    qemu = shutil.which(QEMU[arch])
    if qemu is None:
        pytest.skip(f"{QEMU[arch]} is not installed (./dev package-test installs qemu-user-static)")
    needs_root_and_debootstrap()
    # debootstrap's first stage only fetches and unpacks; its second stage would
    # run ARM maintainer scripts, which needs binfmt_misc. Unpacking every
    # fetched package (python3 included) is enough to run python3 under qemu.
    base = cached(
        arm_root(arch),
        [
            [
                "debootstrap",
                "--foreign",
                f"--arch={arch}",
                "--variant=minbase",
                "--include=python3",
                "bookworm",
                "{}",
                MIRROR,
            ],
            [
                "sh",
                "-c",
                'for d in "$1"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$d" "$1"; done',
                "unpack",
                "{}",
            ],
        ],
    )
    root = tmp_path / "root"
    subprocess.run(["cp", "-a", str(base), str(root)], check=True)
    subprocess.run(["dpkg-deb", "-x", str(arm_debs[arch]), str(root)], check=True)
    shutil.copy(qemu, root / "usr/bin" / QEMU[arch])
    (root / "var/lib/covergw").mkdir(parents=True, exist_ok=True)
    try:
        # Named explicitly, qemu needs no binfmt_misc registration on the host.
        covergw = in_root(
            root, f"/usr/bin/{QEMU[arch]}", "/usr/bin/python3", "-I", "/usr/bin/covergw"
        )
        version = subprocess.run(
            [*covergw, "--version"], capture_output=True, text=True, env=CLEAN_ENV, check=False
        )
        assert version.returncode == 0, version.stderr
        daemon_reaches_broker(root, covergw, start_s=180)
    finally:
        remove(root)
