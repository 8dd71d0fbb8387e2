"""A real small filesystem for disk-full tests: a tmpfs the test mounts and always unmounts."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_fs(where: Path, size_kib: int) -> Iterator[Path]:
    """Mount a ``size_kib`` tmpfs at ``where``; skip the test when that is not possible."""
    if os.geteuid() != 0:
        pytest.skip("disk-full tests mount a tmpfs and need root (CI runs as root)")
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_kib}k,mode=0700", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(path: Path, *, leave: int = 0) -> int:
    """Write a file until the filesystem is full (less ``leave`` bytes); return its size."""
    written = 0
    chunk = b"\xa5" * 4096
    with path.open("ab", buffering=0) as f:
        while True:
            stat = os.statvfs(path.parent)
            if stat.f_bavail * stat.f_frsize <= leave:
                break
            try:
                written += f.write(chunk)
            except OSError:
                break
    return written
