"""``covergw demo``: alarms as the platform gets them; Ctrl-C leaves nothing running."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime

from gateway.tools.demo import Board


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
        start_new_session=True,  # a terminal of its own: Ctrl-C goes to the whole group
    )
    assert proc.stdout is not None
    seen = ""
    deadline = time.monotonic() + 60
    while "RAISED" not in seen and time.monotonic() < deadline:
        seen += proc.stdout.readline()  # the alarm reached the broker
    os.killpg(proc.pid, signal.SIGINT)  # as the terminal does on Ctrl-C: every process
    out, err = proc.communicate(timeout=30)
    out = seen + out
    assert proc.returncode == 0, err
    assert "ERROR" not in err  # the daemon stopped before its broker did
    assert "cover_open" in out
    assert "RAISED" in out
    assert "summary" in out
    assert running_demo_brokers() == []


def test_an_alarm_from_a_commercial_sensor_names_its_model() -> None:
    out = io.StringIO()
    board = Board(out)
    alarm = {
        "msg_id": "m1",
        "time": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "kind": "cover_open",
        "sub": None,
        "state": "raised",
        "value": 58.61,
        "unit": "deg",
        "cover": {"cover_id": "HZ-XH-000303", "owner_unit": "drainage"},
        "source": {"type": "device", "model": "em310-tilt", "device_id": "24e124710c401234"},
    }
    board.take("covers/gw/alarm", alarm)
    board.take("covers/gw/alarm", {**alarm, "msg_id": "m2", "source": {"type": "node"}})
    lines = out.getvalue().splitlines()
    assert "cover_open em310-tilt" in lines[1]
    assert "em310" not in lines[2]
