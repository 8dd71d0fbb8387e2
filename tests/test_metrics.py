"""The Prometheus endpoint serves the stats counters; it is off unless asked for."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

from firmware_sim.broker import Broker, free_port
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.events import FrameHeard
from gateway.protocol.framing import Received
from gateway.protocol.messages import Battery, Frame, FrameFlags, MessageType


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


async def test_metrics_endpoint(tmp_path: Path) -> None:
    port = free_port()
    with Broker(tmp_path / "broker") as broker:
        data = {
            "gateway": {"id": "gw-m", "state_dir": str(tmp_path / "s")},
            "uplink": {"host": "127.0.0.1", "port": broker.port},
            "metrics": {"enabled": True, "listen": f"127.0.0.1:{port}"},
        }
        gateway = Gateway(parse_config(data, base_dir=tmp_path))
        stop = asyncio.Event()
        task = asyncio.create_task(gateway.run(stop))
        await asyncio.sleep(0.3)
        frame = Frame(7, 1, MessageType.REPORT, FrameFlags.NONE, (Battery(3600),))
        for _ in range(2):
            gateway.submit(FrameHeard("lora0", 0.0, Received(frame, b"")), critical=False)
        await asyncio.sleep(1.5)  # a tick refreshes the snapshot
        text = await asyncio.to_thread(scrape, port)
        stop.set()
        await task
    assert "covergw_duplicates_total 1.0" in text
    assert "covergw_unregistered_frames_total 1.0" in text
    assert "covergw_uplink_connected 1.0" in text
    assert 'covergw_queue_depth{lane="alarm"} 0.0' in text


def test_metrics_off_by_default(tmp_path: Path) -> None:
    config = parse_config({"gateway": {"id": "g", "state_dir": str(tmp_path)}}, base_dir=tmp_path)
    assert config.metrics.enabled is False
    assert Gateway(config).metrics is None
