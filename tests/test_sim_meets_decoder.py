"""The simulator and the decoder meet over real ptys and a real UDP socket."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import pytest

from firmware_sim.runner import ScenarioRunner
from firmware_sim.scenario import Scenario
from gateway.errors import RejectReason
from gateway.protocol.codec import decode_frame
from gateway.protocol.framing import Received
from gateway.protocol.messages import (
    Battery,
    Event,
    EventCode,
    FrameFlags,
    MessageType,
    Tilt,
    WaterDepth,
)
from tests.conftest import read_items


@pytest.mark.parametrize(
    ("dialect", "rssi_append", "chunk"),
    [("transparent", False, 0), ("transparent", True, 1), ("at", False, 0), ("at", False, 3)],
)
async def test_node_reports_over_pty(
    make_scenario: Callable[..., Scenario], dialect: str, rssi_append: bool, chunk: int
) -> None:
    scenario = make_scenario(
        radio=[{"name": "r", "dialect": dialect, "rssi_append": rssi_append, "chunk_bytes": chunk}],
        nodes=[
            {
                "id": "00C0FFEE",
                "link": "r",
                "report_interval_s": 0.2,
                "tilt_deg": [-1.5, 0.3],
                "water_mm": 1850,
                "battery_mv": 3612,
                "rx_rssi_dbm": -97,
            }
        ],
    )
    async with ScenarioRunner(scenario) as sim:
        path = sim.endpoints().radios["r"]["path"]
        run = asyncio.create_task(sim.run())
        items, framer = await read_items(path, dialect=dialect, rssi_append=rssi_append, want=4)
        run.cancel()
    frames = [i for i in items if isinstance(i, Received)]
    assert frames[0].frame.msg_type is MessageType.BOOT
    report = frames[1]
    assert report.frame.node_hex == "00C0FFEE"
    assert report.frame.msg_type is MessageType.REPORT
    assert report.frame.first(Tilt) == Tilt(-1.5, 0.3)
    assert report.frame.first(WaterDepth) == WaterDepth(1850)
    assert report.frame.first(Battery) == Battery(3612)
    if dialect == "at" or rssi_append:
        assert report.rssi_dbm == -97
    seqs = [f.frame.seq for f in frames]
    assert seqs == list(range(len(seqs)))
    assert not framer.stats.rejected


async def test_event_retransmissions_noise_and_seq_wrap(
    make_scenario: Callable[..., Scenario],
) -> None:
    scenario = make_scenario(
        radio=[{"name": "r", "rssi_append": True}],
        nodes=[
            {
                "id": "00C0FFEE",
                "link": "r",
                "report_interval_s": 0.15,
                "seq_start": 65534,
                "boot_on_start": False,
            }
        ],
        timeline=[
            {"at_s": 0.1, "do": "noise", "link": "r", "bytes": 300},
            {"at_s": 0.5, "do": "set", "node": "00C0FFEE", "tilt_deg": [45.2, -1.1]},
            {
                "at_s": 0.5,
                "do": "event",
                "node": "00C0FFEE",
                "event": "cover_opened",
                "retries": 2,
                "age_s": 3,
            },
        ],
    )
    async with ScenarioRunner(scenario, speed=2.0) as sim:
        path = sim.endpoints().radios["r"]["path"]
        run = asyncio.create_task(sim.run())
        # Frames enough for the event's two retries on a slow machine too (12 were not, once).
        items, framer = await read_items(path, rssi_append=True, want=20)
        run.cancel()
    frames = [i.frame for i in items if isinstance(i, Received)]
    seqs = [f.seq for f in frames]
    assert 65535 in seqs
    assert seqs.index(0) == seqs.index(65535) + 1  # wraps 65535 -> 0
    events = [f for f in frames if f.msg_type is MessageType.EVENT]
    assert len(events) == 3
    assert len({e.seq for e in events}) == 1
    assert [FrameFlags.RETRANSMISSION in e.flags for e in events] == [False, True, True]
    assert events[0].first(Event) == Event(EventCode.COVER_OPENED, 3, 4521)
    assert framer.stats.skipped_bytes > 0  # the noise was there and was skipped
    assert (
        framer.stats.rejected[RejectReason.BAD_CRC]
        + framer.stats.rejected[RejectReason.BAD_LENGTH]
        + framer.stats.rejected[RejectReason.TRUNCATED]
        > 0
    )


async def test_nbiot_node_sends_one_frame_per_datagram(
    make_scenario: Callable[..., Scenario],
) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    port = sock.getsockname()[1]
    scenario = make_scenario(
        udp=[{"name": "nb"}],
        nodes=[
            {
                "id": "00000101",
                "link": "nb",
                "report_interval_s": 0.1,
                "water_mm": 900,
                "boot_on_start": False,
            }
        ],
        timeline=[{"at_s": 0, "do": "duplicate", "node": "00000101", "count": 1}],
    )
    loop = asyncio.get_running_loop()
    async with ScenarioRunner(scenario, udp_target=("127.0.0.1", port)) as sim:
        run = asyncio.create_task(sim.run())
        datagrams = [await asyncio.wait_for(loop.sock_recv(sock, 512), 5) for _ in range(3)]
        run.cancel()
    sock.close()
    frames = [decode_frame(d) for d in datagrams]  # exactly one whole frame each
    assert frames[0] == frames[1]  # heard twice
    assert [f.seq for f in frames] == [0, 0, 1]
    assert frames[2].first(WaterDepth) == WaterDepth(900)
