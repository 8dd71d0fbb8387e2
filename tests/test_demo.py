"""``covergw demo``: alarms as the platform gets them; Ctrl-C leaves nothing running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time


def running_demo_brokers() -> list[str]:
    found = subprocess.run(
        ["pgrep", "-f", "covergw-demo-"], capture_output=True, text=True, check=False
    )
    return [pid for pid in found.stdout.split() if pid != str(os.getpid())]


def test_demo_shows_alarms_and_ctrl_c_leaves_nothing_running() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli",
            "demo",
            "--scenario",
            "cover_opened",
            "--speed",
            "4",
            "--duration",
            "60",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(6)  # the cover is opened at t=3 s of scenario time, i.e. 0.75 s in
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "cover_open" in out
    assert "RAISED" in out
    assert "summary" in out
    assert running_demo_brokers() == []
