"""One validation for check-config and run (issue 8.9): what one refuses, the other refuses alike.

Each case is a configuration that today either passes ``check-config`` and then
crashes ``run``, or crashes both with a traceback. Both must now refuse it with
the same key path and reason, exit 2, and print no traceback.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.hostile.conftest import COVER_ID, NODE_ID, Daemon, Launch, check_config, wait_exit


async def run_and_check(gw: Daemon) -> tuple[int, subprocess.CompletedProcess[str]]:
    """The daemon's exit status and check-config's verdict on the same file, side by side."""
    return await asyncio.gather(wait_exit(gw.proc, 30), asyncio.to_thread(check_config, gw.config))


def gbk_registry(tmp: Path) -> str:
    path = tmp / "gbk.csv"
    path.write_bytes(
        f"cover_id,owner_unit,node_id,address\n{COVER_ID},排水,{NODE_ID:08X},文三路\n".encode("gbk")
    )
    return str(path)


def not_a_ca(tmp: Path) -> str:
    path = tmp / "ca.pem"
    path.write_text("this is not a certificate\n")
    return str(path)


CASES: list[tuple[str, Any, str]] = [
    ("nan threshold", {"alarms": {"tilt_deg": float("nan")}}, "alarms.tilt_deg: must be a finite"),
    (
        "infinite timeout",
        {"uplink": {"publish_timeout_s": float("inf")}},
        "uplink.publish_timeout_s: must be a finite",
    ),
    (
        "nan in a kind's threshold",
        {"alarms": {"kind": {"gas": {"gas_CH4": float("nan")}}}},
        "alarms.kind.gas.gas_CH4: must be a finite",
    ),
    (
        "misspelt key",
        {"uplink": {"keepalive": 30}},
        "uplink.keepalive: unknown key (did you mean 'keepalive_s'?)",
    ),
    ("gbk registry", lambda tmp: {"gateway": {"registry": gbk_registry(tmp)}}, "gateway.registry:"),
    (
        "udp on every address without allow",
        {"udp": {"bind": "0.0.0.0:5684"}},
        "udp[0].allow: is required when binding 0.0.0.0 (not loopback)",
    ),
    (
        "udp allow not a network",
        {"udp": {"allow": ["10.0.0.300/8"]}},
        "udp[0].allow: '10.0.0.300/8' is not",
    ),
    ("udp bound to a name", {"udp": {"bind": "localhost:5684"}}, "udp[0].bind: must be IP:PORT"),
    (
        "metrics on a name",
        {"metrics": {"enabled": True, "listen": "no-such-host.invalid:9108"}},
        "metrics.listen: must be IP:PORT",
    ),
    (
        "control socket path too long",
        {"gateway": {"control_socket": "/tmp/" + "x" * 120 + ".sock"}},
        "gateway.control_socket: the control socket path",
    ),
    (
        "a CA file that is no CA",
        lambda tmp: {"uplink": {"tls": {"enabled": True, "ca_file": not_a_ca(tmp)}}},
        "uplink.tls.ca_file: not a usable CA file",
    ),
    (
        "threshold out of range",
        {"alarms": {"offline_after_s": 0}},
        "alarms.offline_after_s: must be",
    ),
    ("gateway id too long", {"gateway": {"id": "g" * 200}}, "gateway.id: must be 1–64"),
]


@pytest.mark.parametrize(("patch", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_check_config_and_run_refuse_alike(
    launch: Launch, tmp_path: Path, patch: Any, expected: str
) -> None:
    tables = patch(tmp_path) if callable(patch) else patch
    gw = await launch(wait=False, **tables)
    code, checked = await run_and_check(gw)
    log = gw.log_text()
    assert checked.returncode == 2, checked.stdout + checked.stderr
    assert code == 2, log
    assert expected in checked.stderr
    assert expected in log
    assert "Traceback" not in checked.stderr + log


async def test_every_error_is_reported_in_one_go(launch: Launch) -> None:
    gw = await launch(
        wait=False,
        uplink={"port": 70000, "keepalive_s": "60"},
        queue={"flush_max": 0},
        uplnk={"host": "x"},
    )
    code, checked = await run_and_check(gw)
    assert code == checked.returncode == 2
    for expected in (
        "uplink.port: must be 1–65535, got 70000",
        "uplink.keepalive_s: must be an integer, got '60'",
        "queue.flush_max: must be 1–100000, got 0",
        "uplnk: unknown key (did you mean 'uplink'?)",
    ):
        assert expected in checked.stderr
        assert expected in gw.log_text()


async def test_registry_threshold_out_of_range_leaves_the_row_out_in_both(
    launch: Launch, tmp_path: Path
) -> None:
    registry = tmp_path / "thresholds.csv"
    registry.write_text(
        "cover_id,owner_unit,node_id,tilt_deg,offline_after_s\n"
        f"{COVER_ID},drainage,{NODE_ID:08X},15,2700\n"
        "HZ-NAN,drainage,00000002,nan,\n"
        "HZ-HUGE,drainage,00000003,,1e9\n",
        encoding="utf-8",
    )
    gw = await launch(gateway={"registry": str(registry)})
    checked = check_config(gw.config)
    assert checked.returncode == 1
    assert "line 3: tilt_deg: must be 0.5–90, got 'nan': row left out" in checked.stderr
    assert "line 4: offline_after_s: must be 1–604800, got '1e9': row left out" in checked.stderr
    status = [m.payload for m in gw.collector.messages if m.topic.endswith("/status")][-1]
    assert status["registry_covers"] == 1
    assert len(status["registry_errors"]) == 2
    await gw.assert_serving()
