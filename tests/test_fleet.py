"""Three gateways on a three-node NATS cluster: the fleet run of scripts/fleet.py, small.

Every alarm reaches the platform (on another node) with its cover record;
the gateway of a killed node fails over to another node and delivers what it
queued meanwhile; a gateway's credentials cannot publish under another root.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from firmware_sim.fleet import run_fleet

pytestmark = pytest.mark.skipif(
    shutil.which("nats-server") is None and not Path("/usr/sbin/nats-server").exists(),
    reason="nats-server is not installed (Debian package nats-server)",
)


async def test_three_gateways_survive_a_node_of_the_cluster(tmp_path: Path) -> None:
    result = await run_fleet(tmp_path, gateways=3, kill=2, log=lambda *_: None)
    assert result.alarms_missing == []
    assert result.alarms_delivered == result.alarms_expected == 6
    assert result.alarms_without_cover == 0
    assert result.gateways_on_killed_node == 1
    assert len(result.reconnect_s) == 1
    assert not result.spoof_delivered
