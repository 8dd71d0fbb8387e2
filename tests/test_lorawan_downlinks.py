"""``device_downlink``: a platform command becomes the model's bytes on ChirpStack's command/down.

Real Mosquitto, the real gateway, the simulated ChirpStack answering with
txack and ack; the platform's side is what reaches covers/<gw>/#.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from firmware_sim.netserver import NetworkServer
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.protocol.devices import em310_tilt
from tests.harness import Broker, Collector

TILT = "24e124710c401234"
MUD = "24e124713d105678"
IMEI = "868508064807350"
REGISTRY = f"""\
cover_id,owner_unit,address,device,device_id
CV-0421,drainage,East St 1,em310-tilt,{TILT}
CV-0421,,,em400-mud,{MUD}
W-0088,drainage,West St 9,em400-mud,{IMEI}
"""


@asynccontextmanager
async def running(tmp_path: Path, broker: Broker) -> AsyncIterator[Gateway]:
    (tmp_path / "covers.csv").write_text(REGISTRY)
    data = {
        "gateway": {
            "id": "gw-d",
            "state_dir": str(tmp_path / "s"),
            "registry": str(tmp_path / "covers.csv"),
        },
        "uplink": {"host": "127.0.0.1", "port": broker.port, "protocol": "3.1.1"},
        "queue": {"flush_interval_s": 0.05},
        # The demo's arrangement: one broker is both the platform's and ChirpStack's.
        "lorawan": [{"name": "chirpstack", "port": broker.port, "reconnect_min_s": 0.1}],
    }
    gateway = Gateway(parse_config(data, base_dir=tmp_path))
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    try:
        async with asyncio.timeout(10):
            while gateway.drivers[0].status()["state"] != "open":
                await asyncio.sleep(0.05)
        yield gateway
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    with Broker(tmp_path / "broker") as b:
        yield b


async def ask(collector: Collector, port: int, request: dict[str, Any]) -> dict[str, Any]:
    async with aiomqtt.Client("127.0.0.1", port, identifier="test-platform") as client:
        await client.publish("covers/gw-d/cmd", json.dumps(request), qos=1)
    await collector.wait_for(
        lambda: any(r["request_id"] == request["request_id"] for r in collector.of("response"))
    )
    return next(r for r in collector.of("response") if r["request_id"] == request["request_id"])


async def test_a_command_produces_the_models_bytes_and_its_outcomes(
    tmp_path: Path, broker: Broker
) -> None:
    async with (
        Collector(broker.port) as collector,
        NetworkServer("127.0.0.1", broker.port) as ns,
        running(tmp_path, broker),
    ):
        # The gateway learns the device's ChirpStack application from its uplink.
        await ns.up(TILT, em310_tilt.build_reading(battery_pct=99), f_port=85, f_cnt=1)
        await ns.up(MUD, bytes.fromhex("04820008"), f_port=85, f_cnt=1)
        await collector.wait_for(
            lambda: {r["source"].get("device_id") for r in collector.readings()} >= {TILT, MUD}
        )
        answer = await ask(
            collector,
            broker.port,
            {
                "request_id": "r-interval",
                "cmd": "device_downlink",
                "args": {"device_id": TILT, "action": "set_interval", "params": {"seconds": 600}},
            },
        )
        assert answer["ok"], answer
        assert answer["result"]["data_hex"] == "ff035802"  # the spec's example (2.3)
        # By cover: the one device on CV-0421 that can re-zero is the EM310-TILT.
        rezero = await ask(
            collector,
            broker.port,
            {
                "request_id": "r-rezero",
                "cmd": "device_downlink",
                "args": {"cover_id": "CV-0421", "action": "rezero", "confirmed": False},
            },
        )
        assert rezero["ok"], rezero
        async with asyncio.timeout(15):
            downlinks = await ns.wait_downlinks(2)
        assert [(d.dev_eui, d.f_port, d.data.hex(), d.confirmed) for d in downlinks] == [
            (TILT, 85, "ff035802", True),
            (TILT, 85, "ff62ff", False),
        ]
        assert ns.refused_downlinks == []

        def states(request_id: str) -> list[str]:
            return [m["state"] for m in collector.of("downlink") if m["request_id"] == request_id]

        await collector.wait_for(
            lambda: (
                states("r-interval") == ["enqueued", "sent", "acknowledged"]
                and states("r-rezero") == ["enqueued", "sent"]
            )
        )
        acknowledged = collector.of("downlink")[-1]
        assert acknowledged["device"] == {"model": "em310-tilt", "device_id": TILT}
        assert acknowledged["cover_id"] == "CV-0421"
        assert collector.errors == []


async def test_refused_downlinks_say_why(tmp_path: Path, broker: Broker) -> None:
    async with Collector(broker.port) as collector, running(tmp_path, broker):
        cases = {
            # Both devices of CV-0421 can reboot: which one?
            "r-1": ({"cover_id": "CV-0421", "action": "reboot"}, "invalid", "give device_id"),
            "r-2": ({"device_id": IMEI, "action": "reboot"}, "invalid", "device_id"),  # schema
            "r-3": ({"cover_id": "W-0088", "action": "reboot"}, "invalid", "no LoRaWAN device"),
            "r-4": ({"device_id": MUD, "action": "rezero"}, "invalid", "no downlink 'rezero'"),
            "r-5": (
                {"device_id": TILT, "action": "set_interval", "params": {"seconds": 0}},
                "invalid",
                "seconds=0",
            ),
            "r-6": (
                {"device_id": "0011223344556677", "action": "reboot"},
                "not_found",
                "no device",
            ),
            # Never heard, no application_id configured: ChirpStack's topic is unknown.
            "r-7": ({"device_id": TILT, "action": "reboot"}, "refused", "application id"),
        }
        for request_id, (args, code, why) in cases.items():
            answer = await ask(
                collector,
                broker.port,
                {"request_id": request_id, "cmd": "device_downlink", "args": args},
            )
            assert not answer["ok"]
            assert answer["error"]["code"] == code, (request_id, answer)
            assert why in answer["error"]["message"], (request_id, answer)
        assert collector.of("downlink") == []
        assert collector.errors == []
