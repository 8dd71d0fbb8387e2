"""The offline install path: the .deb, unpacked into a scratch root, runs on Debian's python3."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.vectors import VECTORS

ROOT = Path(__file__).resolve().parent.parent
CLEAN_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}

pytestmark = pytest.mark.skipif(
    not (shutil.which("dpkg-deb") and Path("/usr/bin/python3").exists()),
    reason="needs Debian's dpkg-deb and python3",
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run(
        [str(ROOT / "deploy" / "build-deb.sh"), str(out)],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    deb = Path(built.stdout.strip().splitlines()[-1])
    root = tmp_path_factory.mktemp("scratch-root")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    info = subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Depends"], capture_output=True, text=True, check=True
    )
    assert info.stdout.strip() == "python3 (>= 3.11), adduser"
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
    assert (scratch / "opt/covergw/lib/gateway/schemas/command.schema.json").is_file()
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
