"""SIGHUP reload: registry and thresholds change in place; a bad file changes nothing."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from firmware_sim.broker import Broker
from gateway.config import load_config
from gateway.daemon import Gateway
from gateway.daemon_main import serve
from gateway.events import FrameHeard
from gateway.protocol.framing import Received
from gateway.protocol.messages import Event, EventCode, Frame, FrameFlags, MessageType
from tests.harness import Collector


def write_config(path: Path, port: int, *, tilt: float) -> None:
    path.write_text(
        f'[gateway]\nid = "gw-r"\nstate_dir = "{path.parent}/state"\nregistry = "covers.csv"\n'
        f'[uplink]\nhost = "127.0.0.1"\nport = {port}\nstats_interval_s = 0.5\n'
        f"[alarms]\ntilt_deg = {tilt}\n"
    )


def opened(node: int) -> FrameHeard:
    frame = Frame(
        node, 1, MessageType.EVENT, FrameFlags.NODE_ALARM, (Event(EventCode.COVER_OPENED, 0, 0),)
    )
    # Heard now: a frame stamped at the epoch would be long overdue, and the node offline
    # at the pipeline's first look at the offline deadlines.
    return FrameHeard("lora0", time.time(), Received(frame, b""))


async def test_reload_applies_registry_and_thresholds_and_refuses_bad_files(tmp_path: Path) -> None:
    covers = tmp_path / "covers.csv"
    covers.write_text("cover_id,owner_unit,node_id\nC-1,drainage,00C0FFEE\n")
    config = tmp_path / "gw.toml"
    with Broker(tmp_path / "broker") as broker:
        write_config(config, broker.port, tilt=15)
        async with Collector(broker.port) as collector:
            gateway = Gateway(load_config(config), config_path=config)
            stop = asyncio.Event()
            task = asyncio.create_task(serve(gateway, stop))
            await collector.wait_for(lambda: bool(collector.of("status")))
            gateway.submit(opened(0x00C0FFEE), critical=True)
            await collector.wait_for(lambda: bool(collector.alarms()))

            covers.write_text(
                "cover_id,owner_unit,node_id\nC-1,drainage,00C0FFEE\nC-2,gas,00000002\n"
            )
            write_config(config, broker.port, tilt=5)
            os.kill(os.getpid(), signal.SIGHUP)  # as systemctl reload does
            await collector.wait_for(lambda: "reload" in collector.of("status")[-1])
            applied = collector.of("status")[-1]
            assert gateway.engine.thresholds(None).tilt_deg == 5
            assert "C-2" in gateway.engine.registry.covers
            assert [a["kind"] for a in gateway.engine.active_alarms()] == ["cover_open"]

            write_config(config, 70000, tilt=9)
            gateway.request_reload()
            await collector.wait_for(lambda: collector.of("status")[-1]["reload"]["ok"] is False)
            refused = collector.of("status")[-1]
            stop.set()
            await task
    assert applied["reload"]["ok"] is True
    assert applied["registry_covers"] == 2
    assert applied["config_digest"] != collector.of("status")[0]["config_digest"]
    assert "uplink.port: must be 1–65535, got 70000" in refused["reload"]["reason"]
    assert refused["config_digest"] == applied["config_digest"]  # the old one stays in force
    assert gateway.engine.thresholds(None).tilt_deg == 5
    assert collector.errors == []
