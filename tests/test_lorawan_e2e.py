"""Commercial sensors end to end: simulated ChirpStack and an NB-IoT modem to a real Mosquitto.

What the platform (a Collector, validating every message against the
schemas) receives is asserted: readings of every model with the cover's
registry record, a ``cover_open`` from a lifted EM310-TILT, ``water_*`` alarms
from a flooding EM400-MUD well, an uplink delivered twice by ChirpStack
forwarded once, and an NB-IoT history frame's readings in order.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.netserver import NetworkServer
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.protocol.devices import build_nb_frame, em310_tilt, em400
from tests.harness import Broker, Collector, free_udp_port

TILT = "24e124710c401234"
MUD = "24e124713d105678"
UDL310 = "24e124126c400001"
DDS = "a840414b71876543"
IMEI = "868508064807350"
REGISTRY = f"""\
cover_id,owner_unit,cover_kind,address,latitude,longitude,device,device_id
CV-0421,telecom,telecom_manhole,学院路 14 号,30.2792,120.1404,em310-tilt,{TILT}
W-0088,drainage,rainwater,文三路 88 号,30.2741,120.1551,em400-mud,{MUD}
W-0089,drainage,sewage,文三路 90 号,,,em310-udl,{UDL310}
W-0091,drainage,sewage,文三路 92 号,,,dds75-lb,{DDS}
W-0092,water_supply,valve,学院路 12 号,,,em400-mud,{IMEI}
"""


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    with Broker(tmp_path / "broker") as b:
        yield b


@asynccontextmanager
async def running(tmp_path: Path, broker: Broker, udp_port: int) -> AsyncIterator[Gateway]:
    (tmp_path / "covers.csv").write_text(REGISTRY, encoding="utf-8")
    data: dict[str, Any] = {
        "gateway": {
            "id": "gw-e2e",
            "state_dir": str(tmp_path / "state"),
            "registry": str(tmp_path / "covers.csv"),
        },
        "uplink": {"host": "127.0.0.1", "port": broker.port, "stats_interval_s": 1},
        "queue": {"flush_interval_s": 0.05},
        "lorawan": [{"name": "chirpstack", "port": broker.port, "reconnect_min_s": 0.1}],
        "udp": [{"name": "nb", "bind": f"127.0.0.1:{udp_port}", "format": "milesight-nb"}],
    }
    gateway = Gateway(parse_config(data, base_dir=tmp_path))
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    try:
        async with asyncio.timeout(10):
            while any(d.status()["state"] != "open" for d in gateway.drivers):
                await asyncio.sleep(0.05)
        yield gateway
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


def device_readings(collector: Collector, device_id: str) -> list[dict[str, Any]]:
    return [r for r in collector.readings() if r["source"].get("device_id") == device_id]


async def test_every_model_reaches_the_platform_with_its_cover(
    tmp_path: Path, broker: Broker
) -> None:
    udp_port = free_udp_port()
    async with (
        Collector(broker.port) as collector,
        NetworkServer("127.0.0.1", broker.port) as ns,
        running(tmp_path, broker, udp_port),
    ):
        # A cover lifted: two normal reports set the installed orientation, then the
        # EM310-TILT reports (with its own threshold bits) a cover standing on edge.
        flat = em310_tilt.build_reading(battery_pct=98, tilt_deg=(0.4, -0.3, 89.9))
        lifted = em310_tilt.build_reading(
            tilt_deg=(62.0, 4.0, 27.5), alarms=frozenset({"tilt_x", "tilt_z"})
        )
        for f_cnt, payload in enumerate((flat, flat, lifted, lifted), start=100):
            await ns.up(TILT, payload, f_port=85, f_cnt=f_cnt, model="em310-tilt")
        # A well flooding: the distance from the sensor to the water falls.
        for f_cnt, distance in enumerate((2400, 2400, 450, 450, 150, 150), start=7):
            await ns.up(
                MUD,
                em400.build_reading(battery_pct=91, temperature_c=12.5, distance_mm=distance),
                f_port=85,
                f_cnt=f_cnt,
                model="em400-mud",
            )
        # ChirpStack delivers one uplink twice (same deduplicationId): forwarded once.
        twice = await ns.up(
            DDS, bytes.fromhex("0d2a0b1a01ff3f01"), f_port=2, f_cnt=57, model="dds75-lb"
        )
        await ns.publish(DDS, "up", twice)
        await ns.up(UDL310, bytes.fromhex("01755c03824408040000"), f_port=85, f_cnt=3)
        # NB-IoT: a history frame with two readings, straight from the modem over UDP.
        history = em400.build_reading(battery_pct=55, distance_mm=1800) + em400.build_reading(
            battery_pct=54, distance_mm=1700
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(
                build_nb_frame(history, imei=IMEI, frame_cnt=5, csq=18), ("127.0.0.1", udp_port)
            )

        def summary() -> set[tuple[Any, ...]]:
            return set(collector.alarm_summary())

        await collector.wait_for(
            lambda: (
                {
                    ("CV-0421", "cover_open", None, "raised"),
                    ("W-0088", "water_high", MUD, "raised"),
                    ("W-0088", "water_overflow", MUD, "raised"),
                }
                <= summary()
                and len(device_readings(collector, IMEI)) == 2
                and len(device_readings(collector, DDS)) == 1
                and len(device_readings(collector, UDL310)) == 1
                and len(device_readings(collector, MUD)) == 6
                and len(device_readings(collector, TILT)) == 4
            ),
            timeout=30,
        )
        # The repeat was heard and dropped (counted), not merely late.
        await collector.wait_for(
            lambda: any(
                st["ports"]["chirpstack"].get("duplicates") == 1 for st in collector.of("stats")
            )
        )
    assert collector.errors == []
    alarms = {(a["cover"]["cover_id"], a["kind"]): a for a in collector.alarms()}
    opened = alarms[("CV-0421", "cover_open")]
    assert opened["cover"] == {
        "cover_id": "CV-0421",
        "owner_unit": "telecom",
        "cover_kind": "telecom_manhole",
        "address": "学院路 14 号",
        "lat": 30.2792,
        "lon": 120.1404,
    }
    assert opened["source"]["device_id"] == TILT
    assert opened["value"] > 40  # the tilt against the installed orientation, as evidence
    assert opened["evidence"]["tilt_deg"] > 40
    overflow = alarms[("W-0088", "water_overflow")]
    assert overflow["value"] == 150
    assert overflow["cover"]["owner_unit"] == "drainage"
    assert ("W-0088", "cover_open") not in alarms  # position was never reported "tilt"
    # Every model's quantities, under the cover's record.
    tilt = device_readings(collector, TILT)[0]
    assert tilt["registered"] is True
    assert tilt["source"]["model"] == "em310-tilt"
    assert tilt["quantities"]["tilt_z_deg"] == 89.9
    assert tilt["source"]["rx_rssi_dbm"] == -87
    dds = device_readings(collector, DDS)
    assert len(dds) == 1  # delivered twice, forwarded once
    assert dds[0]["quantities"]["distance_mm"] == 2842
    assert dds[0]["cover"]["cover_id"] == "W-0091"
    assert device_readings(collector, UDL310)[0]["quantities"]["distance_mm"] == 2116
    nb = device_readings(collector, IMEI)
    assert [r["quantities"]["distance_mm"] for r in nb] == [1800, 1700]  # wire order
    assert nb[0]["source"]["csq"] == 18
    assert nb[0]["cover"]["cover_id"] == "W-0092"
