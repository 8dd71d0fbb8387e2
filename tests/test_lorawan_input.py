"""The ``[[lorawan]]`` input against a real Mosquitto and the simulated ChirpStack.

What the input hands the gateway's sink is asserted (the engine's side is in
test_lorawan_e2e.py): quantities decoded from ``data`` by the registered
model, the best gateway's link, the frame counter's accounting, and that
hostile events are counted without ending the input.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from firmware_sim.netserver import NetworkServer, event_topic, log_event, status_event, up_event
from gateway.config import LorawanConfig
from gateway.drivers.base import PortState
from gateway.drivers.lorawan import (
    DownlinkOutcome,
    DownlinkRequest,
    DownlinkState,
    LorawanInput,
    new_downlink_id,
)
from gateway.observation import DeviceEventKind, DeviceRef, Observation
from gateway.protocol.devices import em310_tilt, em400
from gateway.registry import parse_registry
from tests.harness import Broker

TILT = "24e124710c401234"
MUD = "24e124713d105678"
STRANGER = "a840414b71876543"
REGISTRY = f"""\
cover_id,owner_unit,address,device,device_id
CV-0421,drainage,East St 1,em310-tilt,{TILT.upper()}
CV-0421,,,em400-mud,{MUD}
"""


@dataclass
class Heard:
    items: list[tuple[Observation, bool]] = field(default_factory=list)
    outcomes: list[DownlinkOutcome] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def sink(self, event: object, critical: bool) -> None:
        assert isinstance(event, Observation)
        self.items.append((event, critical))
        self.arrived.set()

    def outcome(self, outcome: DownlinkOutcome) -> None:
        self.outcomes.append(outcome)
        self.arrived.set()

    @property
    def observations(self) -> list[Observation]:
        return [o for o, _ in self.items]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.arrived.wait(), 0.2)


@dataclass
class Rig:
    broker: Broker
    ns: NetworkServer
    lorawan: LorawanInput
    heard: Heard


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    registry, errors = parse_registry(REGISTRY)
    assert errors == []

    def lookup(device_id: str) -> tuple[DeviceRef, str | None] | None:
        found = registry.device(device_id)
        return None if found is None else (found[0], found[1].cover_id)

    heard = Heard()
    with Broker(tmp_path / "broker") as broker:
        config = LorawanConfig(
            name="chirpstack",
            port=broker.port,
            client_id="covergw-test-lorawan",
            reconnect_min_s=0.05,
            reconnect_max_s=0.2,
            max_event_bytes=4096,
        )
        lorawan = LorawanInput(config, heard.sink, lookup=lookup, on_outcome=heard.outcome)
        stop = asyncio.Event()
        task = asyncio.create_task(lorawan.run(stop))
        async with asyncio.timeout(10):
            while lorawan.state is not PortState.OPEN:
                await asyncio.sleep(0.02)
        async with NetworkServer("127.0.0.1", broker.port) as ns:
            yield Rig(broker, ns, lorawan, heard)
        stop.set()
        await asyncio.wait_for(task, 10)
    assert lorawan.state is PortState.CLOSED


async def test_uplinks_are_decoded_by_the_registered_model(rig: Rig) -> None:
    # The spec's worked examples (sections 2.2 and 3.2), two gateways heard the first.
    await rig.ns.up(
        TILT,
        bytes.fromhex("01756403cf3a0218fc7a2300"),
        f_port=85,
        f_cnt=1207,
        rx=[(-104, -3.0), (-87, 7.5)],
    )
    await rig.ns.up(MUD, bytes.fromhex("8367e800018482410601"), f_port=85, f_cnt=388)
    await rig.heard.wait_for(lambda: len(rig.heard.items) == 2)
    (tilt, tilt_critical), (mud, mud_critical) = rig.heard.items
    assert tilt.device == DeviceRef("em310-tilt", TILT)
    assert tilt.source == "chirpstack"
    q = tilt.quantities
    assert (q.tilt_x_deg, q.tilt_y_deg, q.tilt_z_deg, q.battery_pct) == (5.7, -10.0, 90.82, 100)
    assert (tilt.link.rssi_dbm, tilt.link.snr_db) == (-87, 7.5)  # the stronger gateway
    assert tilt.counter == 1207
    assert tilt.raw == bytes.fromhex("01756403cf3a0218fc7a2300")
    assert tilt.message_id is not None
    assert not tilt_critical
    assert mud.device == DeviceRef("em400-mud", MUD)
    assert (mud.quantities.distance_mm, mud.quantities.temperature_c) == (1601, 23.2)
    assert mud.quantities.device_alarms  # the device's own threshold bits, as evidence
    assert mud_critical  # device alarm evidence is never shed
    assert rig.lorawan.status()["uplinks"] == 2


async def test_duplicates_unknown_devices_and_frame_counters(rig: Rig) -> None:
    payload = em310_tilt.build_reading(battery_pct=90, tilt_deg=(0.5, 0.2, 90.0))
    first = await rig.ns.up(TILT, payload, f_port=85, f_cnt=10)
    # ChirpStack redelivers the same event (same deduplicationId): forwarded once.
    await rig.ns.publish(TILT, "up", first)
    await rig.ns.up(STRANGER, payload, f_port=85, f_cnt=1)  # not in the registry
    await rig.ns.up(TILT, payload, f_port=85, f_cnt=13)  # 11 and 12 were lost
    await rig.ns.up(TILT, payload, f_port=85, f_cnt=13)  # a new id, same counter: a repeat
    await rig.ns.join(TILT, model="em310-tilt")  # rejoin: the counter restarts
    await rig.ns.up(TILT, payload, f_port=85, f_cnt=0)
    await rig.heard.wait_for(lambda: len(rig.heard.items) == 4)
    kinds = [(o.counter, [e.kind for e in o.events]) for o in rig.heard.observations]
    assert kinds == [
        (10, []),
        (13, []),
        (None, [DeviceEventKind.REJOINED]),
        (0, []),
    ]
    status = rig.lorawan.status()
    assert status["duplicates"] == 1
    assert status["fcnt_duplicates"] == 1
    assert status["lost_frames"] == 2  # and not 13 more for the reset after the join
    assert status["fcnt_resets"] == 1
    assert status["unknown_devices"] == 1
    assert status["unknown_device_ids"] == {STRANGER: 1}


async def test_status_and_log_events(rig: Rig) -> None:
    await rig.ns.publish(TILT, "status", status_event(TILT, battery_level=87.5))
    # Mains-powered, or the device cannot tell: no battery value, never a 0 % alarm.
    await rig.ns.publish(MUD, "status", status_event(MUD, external_power=True))
    await rig.ns.publish(MUD, "status", status_event(MUD, unavailable=True))
    await rig.ns.publish(
        TILT, "log", log_event(TILT, level="ERROR", code="UPLINK_CODEC", description="boom")
    )
    await rig.ns.up(TILT, em310_tilt.build_reading(battery_pct=80), f_port=85, f_cnt=1)
    await rig.heard.wait_for(lambda: len(rig.heard.items) == 4)
    batteries = [o.quantities.battery_pct for o in rig.heard.observations]
    assert batteries == [87.5, None, None, 80]
    assert rig.heard.observations[1].extra["network_status"]["external_power"] is True
    assert rig.lorawan.status()["log_events"] == {"error:UPLINK_CODEC": 1}


async def test_hostile_events_are_counted_and_the_input_goes_on(rig: Rig) -> None:
    good = up_event(MUD, em400.build_reading(distance_mm=2000), f_port=85, f_cnt=5)
    topic = event_topic(MUD, "up")

    counters = iter(range(10, 100))

    def bad(**changes: object) -> bytes:
        # Each its own uplink (deduplicationId, fCnt), so none is taken for another's repeat.
        fields = {"deduplicationId": str(uuid.uuid4()), "fCnt": next(counters), **changes}
        return json.dumps({**good, **fields}).encode()

    hostile: list[bytes] = [
        b"not json",
        b"\xff\xfe",
        b"[" * 2000 + b"]" * 2000,  # nesting, under the size cap
        b"x" * 5000,  # over max_event_bytes
        json.dumps([1, 2]).encode(),
        bad(fCnt="eleven"),
        bad(fCnt=-1),
        bad(data="%%%"),
        bad(rxInfo=[{"rssi": "loud"}]),
        bad(rxInfo={"rssi": 1}),
        bad(deviceInfo={"devEui": "zz"}),
        bad(deduplicationId=None),
        bad(deviceInfo={**good["deviceInfo"], "devEui": TILT}),
        bad(fPort=7),  # EM400 sends on 85 only
        bad(data="AQ=="),  # a truncated record
    ]
    for payload in hostile:
        await rig.ns.publish_raw(topic, payload)
    await rig.ns.publish_raw(event_topic(MUD, "location"), b"{}")  # not used: ignored
    await rig.ns.publish_raw(topic, json.dumps({**good, "fCnt": 100}).encode())
    await rig.heard.wait_for(lambda: len(rig.heard.items) == 1)
    assert rig.heard.observations[0].quantities.distance_mm == 2000
    status = rig.lorawan.status()
    rejected = {k: v for k, v in status.items() if k.startswith("rejected_")}
    assert rejected == {
        "rejected_bad_json": 4,
        "rejected_too_large": 1,
        "rejected_bad_field": 7,
        "rejected_topic_mismatch": 1,
        "rejected_decode_unknown_fport": 1,
        "rejected_decode_truncated": 1,
    }
    assert status["ignored_events"] == 1
    assert rig.lorawan.state is PortState.OPEN


async def test_broker_outage_is_reported_and_the_session_resumes(rig: Rig) -> None:
    await rig.ns.up(TILT, em310_tilt.build_reading(battery_pct=70), f_port=85, f_cnt=1)
    await rig.heard.wait_for(lambda: len(rig.heard.items) == 1)
    rig.broker.stop()
    async with asyncio.timeout(15):
        while rig.lorawan.state is PortState.OPEN:
            await asyncio.sleep(0.05)
    assert rig.lorawan.status()["last_error"]
    rig.broker.start()
    async with asyncio.timeout(20):
        while rig.lorawan.status()["connects"] < 2:
            await asyncio.sleep(0.05)
    assert rig.lorawan.state is PortState.OPEN
    async with NetworkServer("127.0.0.1", rig.broker.port) as ns:
        await ns.up(TILT, em310_tilt.build_reading(battery_pct=60), f_port=85, f_cnt=2)
    await rig.heard.wait_for(lambda: len(rig.heard.items) == 2)
    assert rig.heard.observations[1].quantities.battery_pct == 60
    assert rig.lorawan.status()["lost_frames"] == 0


async def test_a_downlink_waits_out_a_broker_outage(rig: Rig) -> None:
    await rig.ns.up(TILT, em310_tilt.build_reading(battery_pct=70), f_port=85, f_cnt=1)
    await rig.heard.wait_for(lambda: len(rig.heard.items) == 1)  # its application is known
    # ChirpStack's own session on the broker survives the outage, as a real one's does.
    async with NetworkServer("127.0.0.1", rig.broker.port, session="sim-chirpstack"):
        pass
    rig.broker.stop()
    async with asyncio.timeout(15):
        while rig.lorawan.state is PortState.OPEN:
            await asyncio.sleep(0.05)
    request = DownlinkRequest(
        downlink_id=new_downlink_id(),
        request_id="r-1",
        device=DeviceRef("em310-tilt", TILT),
        cover_id="CV-0421",
        action="reboot",
        f_port=85,
        data=bytes.fromhex("ff10ff"),
        confirmed=False,
    )
    rig.lorawan.enqueue(request)
    assert rig.lorawan.status()["downlinks_waiting"] == 1
    rig.broker.start()
    async with NetworkServer("127.0.0.1", rig.broker.port, session="sim-chirpstack") as ns:
        async with asyncio.timeout(20):
            (downlink,) = await ns.wait_downlinks(1)
    assert (downlink.queue_item_id, downlink.data) == (request.downlink_id, b"\xff\x10\xff")
    # The network server may read it before the broker's PUBACK reaches the driver,
    # which then reports it enqueued.
    await rig.heard.wait_for(lambda: bool(rig.heard.outcomes), timeout=10)
    assert [(o.request.downlink_id, o.state) for o in rig.heard.outcomes] == [
        (request.downlink_id, DownlinkState.ENQUEUED)
    ]
    assert rig.lorawan.status()["downlinks_waiting"] == 0
    assert rig.lorawan.status()["downlinks_enqueued"] == 1
