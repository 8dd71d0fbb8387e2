"""Vendor covergw and its dependencies for one Debian architecture, from any machine.

Used by ``deploy/build-deb.sh``; run with any CPython >= 3.11 that has pip.
The box cannot fetch anything on site, so the package carries every
dependency. Wheels are fetched for the *target* platform (pip's
``--platform``), so an x86 machine builds arm64 and armhf packages. What is
pure Python is installed once under ``lib/``; what is compiled (or differs
between Python versions) goes under ``lib-cpXY/`` for each CPython the
package supports, and the launcher picks the one of the Python it runs on.

It also writes the machine-readable ``copyright`` file, from each vendored
distribution's metadata, and refuses to build when a distribution's licence
cannot be named: a new dependency must be looked at by a person.
"""

from __future__ import annotations

import argparse
import email
import email.message
import subprocess
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

# Debian architecture -> the machine name in wheel platform tags.
WHEEL_ARCH = {"amd64": "x86_64", "arm64": "aarch64", "armhf": "armv7l"}
# manylinux_2_17 (= manylinux2014) up to the glibc of Debian 12 (2.36); Debian 13 has 2.41.
GLIBC_MINORS = range(17, 37)

# Licences of distributions whose metadata carries no SPDX expression,
# checked by hand against each project's LICENSE file.
KNOWN_LICENCES = {
    "covergw": "covergw",  # its own paragraph: the project states no licence yet
    "aiomqtt": "BSD-3-Clause",
    "construct": "MIT",
    "pymodbus": "BSD-3-Clause",
    "pyserial": "BSD-3-Clause",
}

# Where each licence's full text is on a Debian system, if it is there.
COMMON_LICENCES = {"Apache-2.0": "/usr/share/common-licenses/Apache-2.0"}

# pyserial's wheel ships no licence text; this is its LICENSE.txt in its repository.
BSD_3_CLAUSE = """\
 Redistribution and use in source and binary forms, with or without
 modification, are permitted provided that the following conditions are met:
 .
 * Redistributions of source code must retain the above copyright notice, this
   list of conditions and the following disclaimer.
 .
 * Redistributions in binary form must reproduce the above copyright notice,
   this list of conditions and the following disclaimer in the documentation
   and/or other materials provided with the distribution.
 .
 * Neither the name of the copyright holder nor the names of its
   contributors may be used to endorse or promote products derived from
   this software without specific prior written permission.
 .
 THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
 AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
 IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
 DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
 FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
 DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
 SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
 CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
 OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
 OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""

PIP_QUIET = ["--quiet", "--disable-pip-version-check"]


class VendorError(Exception):
    """The dependencies cannot be vendored as they are; the message says why."""


@dataclass(frozen=True)
class Dist:
    """One installed distribution, as the copyright file describes it."""

    name: str
    version: str
    licence: str
    copyright: str
    files: tuple[str, ...]  # patterns relative to the package root
    licence_files: tuple[str, ...]  # absolute paths on the box
    compiled: bool


def platforms(arch: str) -> list[str]:
    machine = WHEEL_ARCH[arch]
    tags = [f"manylinux_2_{minor}_{machine}" for minor in GLIBC_MINORS]
    tags += [f"manylinux2014_{machine}", f"linux_{machine}"]
    return [arg for tag in tags for arg in ("--platform", tag)]


def target_args(arch: str, python: str) -> list[str]:
    abi = "cp" + python.replace(".", "")
    return [
        *platforms(arch),
        "--python-version",
        python,
        "--implementation",
        "cp",
        "--abi",
        abi,
        "--abi",
        "abi3",
        "--abi",
        "none",
        "--only-binary=:all:",
    ]


def pip(*args: str) -> None:
    done = subprocess.run(  # noqa: S603 -- our own pip, arguments built here
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False
    )
    noise = ("WARNING: Location", "Running pip as the 'root'")
    for line in done.stderr.splitlines():
        if not line.startswith(noise):
            print(line, file=sys.stderr)
    if done.returncode != 0:
        raise VendorError(f"pip {args[0]} failed (exit {done.returncode})")


def download(project: Path, arch: str, python: str, into: Path) -> set[Path]:
    pip("download", *PIP_QUIET, *target_args(arch, python), "--dest", str(into), str(project))
    return set(into.glob("*.whl"))


def is_pure(wheel: Path) -> bool:
    return wheel.name.endswith("-none-any.whl")


def install(wheels: list[Path], dest: Path, arch: str, python: str | None) -> None:
    if not wheels:
        return
    extra = target_args(arch, python) if python else []
    pip(
        "install",
        *PIP_QUIET,
        "--no-deps",
        "--no-compile",
        "--no-warn-script-location",
        "--no-index",
        "--target",
        str(dest),
        *extra,
        *map(str, wheels),
    )


def vendor(project: Path, arch: str, pythons: list[str], home: Path) -> None:
    """Install into ``home`` (the package's /usr/lib/covergw) for every Python in ``pythons``."""
    with tempfile.TemporaryDirectory() as scratch:
        per_python = {
            py: download(project, arch, py, Path(scratch) / py.replace(".", "")) for py in pythons
        }
        by_name: dict[str, set[str]] = defaultdict(set)
        for wheels in per_python.values():
            for wheel in wheels:
                by_name[wheel.name].add(str(wheel))
        # A wheel every Python takes, and that is pure, is shared; the rest is per version.
        shared = {
            name
            for name, where in by_name.items()
            if len(where) == len(pythons) and is_pure(Path(name))
        }
        first = per_python[pythons[0]]
        install(sorted(w for w in first if w.name in shared), home / "lib", arch, None)
        for py, wheels in per_python.items():
            own = sorted(w for w in wheels if w.name not in shared)
            install(own, home / f"lib-cp{py.replace('.', '')}", arch, py)


def metadata(dist_info: Path) -> email.message.Message:
    return email.message_from_string((dist_info / "METADATA").read_text(encoding="utf-8"))


def licence_of(meta: email.message.Message) -> str:
    name = str(meta["Name"])
    expression = meta["License-Expression"]
    if expression:
        return str(expression)
    if name.lower() in KNOWN_LICENCES:
        return KNOWN_LICENCES[name.lower()]
    raise VendorError(
        f"{name}: no License-Expression in its metadata; check its licence and add it to "
        "KNOWN_LICENCES in deploy/debian/vendor.py"
    )


def authors_of(meta: email.message.Message) -> str:
    for field in ("Author", "Author-email", "Maintainer", "Maintainer-email"):
        value = meta[field]
        if value and str(value).strip() not in {"", "None", "UNKNOWN"}:
            return " ".join(str(value).split())
    return f"the {meta['Name']} authors"


def licence_texts(dist_info: Path) -> list[Path]:
    """The licence files a wheel ships: under licenses/ (PEP 639) or beside METADATA."""
    marks = ("LICEN", "COPYING", "NOTICE")
    return sorted(
        p
        for p in dist_info.rglob("*")
        if p.is_file() and ("licenses" in p.parts or any(m in p.name.upper() for m in marks))
    )


def dists(home: Path, box_root: str) -> list[Dist]:
    """Every vendored distribution, read from the RECORD and METADATA pip wrote."""
    found: dict[tuple[str, str], list[Dist]] = defaultdict(list)
    for lib in sorted(p for p in home.iterdir() if p.name.startswith("lib")):
        for dist_info in sorted(lib.glob("*.dist-info")):
            meta = metadata(dist_info)
            top = set()
            for row in (dist_info / "RECORD").read_text().splitlines():
                path = row.split(",", 1)[0]
                if path.startswith(".."):
                    continue  # console scripts: the package has its own launcher
                head = path.split("/", 1)[0]
                top.add(f"{head}/*" if "/" in path else head)
            rel = lib.relative_to(home)
            wheel_tags = (dist_info / "WHEEL").read_text()
            found[(str(meta["Name"]), str(meta["Version"]))].append(
                Dist(
                    name=str(meta["Name"]),
                    version=str(meta["Version"]),
                    licence=licence_of(meta),
                    copyright=authors_of(meta),
                    files=tuple(f"{box_root}/{rel}/{t}" for t in sorted(top)),
                    licence_files=tuple(
                        f"/{box_root}/{rel}/{p.relative_to(lib)}" for p in licence_texts(dist_info)
                    ),
                    compiled="Root-Is-Purelib: false" in wheel_tags,
                )
            )
    merged = []
    for versions in found.values():
        first = versions[0]
        merged.append(
            Dist(
                name=first.name,
                version=first.version,
                licence=first.licence,
                copyright=first.copyright,
                files=tuple(f for d in versions for f in d.files),
                licence_files=tuple(f for d in versions for f in d.licence_files),
                compiled=any(d.compiled for d in versions),
            )
        )
    return sorted(merged, key=lambda d: d.name.lower())


def copyright_file(found: list[Dist], own_name: str) -> str:
    """DEP-5 (machine-readable) copyright for the package, vendored parts included."""
    paragraphs = [
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n"
        "Upstream-Name: covergw\n"
        "Upstream-Contact: covergw team <covergw@localhost>\n"
        "Comment: The package carries its Python dependencies under /usr/lib/covergw\n"
        " (lib/ for pure Python, lib-cpXY/ for what is compiled per CPython version).\n"
        " Each one's own licence text ships with it, in its .dist-info directory;\n"
        " the Files paragraphs below name the copies."
    ]
    paragraphs.append(
        "Files: *\n"
        "Copyright: 2026 covergw team\n"
        "License: covergw\n"
        " The covergw sources do not state a licence yet; ask the covergw team\n"
        " before redistributing them."
    )
    used: set[str] = set()
    for dist in found:
        if dist.name == own_name:
            continue
        used.update(
            part.strip("()") for part in dist.licence.split() if part not in {"AND", "OR", "WITH"}
        )
        lines = [
            "Files: " + "\n ".join(dist.files),
            f"Copyright: {dist.copyright}",
            f"License: {dist.licence}",
            f"Comment: {dist.name} {dist.version}"
            + (
                ", with compiled parts (built by its project for this architecture)"
                if dist.compiled
                else ""
            )
            + ".",
        ]
        if dist.licence_files:
            lines.append(" Full licence text: " + ", ".join(dist.licence_files))
        paragraphs.append("\n".join(lines))
    for licence in sorted(used):
        where = COMMON_LICENCES.get(licence)
        if where:
            text = f" On Debian systems the full text is in {where}."
        elif licence == "BSD-3-Clause":
            text = BSD_3_CLAUSE.rstrip("\n")
        else:
            text = (
                " The full text ships with each distribution under this licence, as named"
                " in its Files paragraph."
            )
        paragraphs.append(f"License: {licence}\n{text}")
    return "\n\n".join(paragraphs) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, required=True, help="covergw's own wheel")
    parser.add_argument("--arch", choices=sorted(WHEEL_ARCH), required=True)
    parser.add_argument("--python", action="append", required=True, help="e.g. 3.11; repeat")
    parser.add_argument("--dest", type=Path, required=True, help="staged /usr/lib/covergw")
    parser.add_argument("--copyright", type=Path, required=True, help="where to write it")
    args = parser.parse_args(argv)
    try:
        vendor(args.project.resolve(), args.arch, args.python, args.dest)
        found = dists(args.dest, "usr/lib/covergw")
    except VendorError as err:
        print(f"vendor: {err}", file=sys.stderr)
        return 1
    args.copyright.write_text(copyright_file(found, "covergw"), encoding="utf-8")
    compiled = [d.name for d in found if d.compiled]
    print(
        f"vendor: {args.arch}: {len(found)} distributions;"
        f" compiled: {', '.join(compiled) or 'none'}",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
