"""Instructions per frame on the per-frame path, counted by callgrind: not timed, so not noisy.

These VMs' speed drifts by 10-20 % from one minute to the next, more than most
single changes to the per-frame path save. Instruction counts are the same run
after run (the hash seed is fixed), so two versions compare in one minute each.

Runs ``bench_hotpath.run`` under ``valgrind --tool=callgrind`` twice with the
same set-up, once over WARM frames and once over WARM + FRAMES, and prints the
difference per frame. Needs valgrind (Debian's package).

    .venv/bin/python scripts/bench_instructions.py [--frames 4000]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

WARM = 3000  # frames run first in both: imports, caches and the device table filled


def child(frames: int, total: int) -> None:
    """What runs under callgrind: the same frames built either way, RUN of them fed."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_hotpath  # noqa: PLC0415 - the child only
    from bench_e2e import report  # noqa: PLC0415

    built = [report(0x00A00000 + i % 2000, i // 2000) for i in range(WARM + total)]
    bench_hotpath.run(b"".join(built[:WARM]), WARM)
    bench_hotpath.run(b"".join(built[: WARM + frames]), WARM + frames)


def counted(frames: int, total: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        valgrind = shutil.which("valgrind")
        if valgrind is None:
            raise SystemExit("valgrind is not installed (Debian: apt install valgrind)")
        run = subprocess.run(  # noqa: S603 - our own script under valgrind
            [
                valgrind,
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                sys.executable,
                __file__,
                "--child",
                str(frames),
                str(total),
            ],
            env={**os.environ, "PYTHONHASHSEED": "0"},
            capture_output=True,
            text=True,
            check=True,
        )
    match = re.search(r"Collected : (\d+)", run.stderr)
    if match is None:
        raise SystemExit(f"no count from callgrind:\n{run.stderr[-2000:]}")
    return int(match.group(1))


def main() -> None:
    if sys.argv[1:2] == ["--child"]:
        child(int(sys.argv[2]), int(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=4000)
    args = parser.parse_args()
    base = counted(0, args.frames)
    full = counted(args.frames, args.frames)
    print(f"per-frame path: {(full - base) / args.frames:,.0f} instructions a frame")


if __name__ == "__main__":
    main()
