"""The device-neutral engine: adapters, rules on quantities, bounded tracking, state rows."""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import count
from pathlib import Path
from types import MappingProxyType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.buffer.queue import Lane, Outgoing
from gateway.config import LimitsConfig, Thresholds, parse_config
from gateway.daemon import Gateway
from gateway.edge import state
from gateway.edge.adapters import from_frame
from gateway.edge.engine import EdgeEngine
from gateway.edge.rules.tilt import tilt_deg
from gateway.events import FrameHeard, SlaveRead
from gateway.observation import (
    DeviceRef,
    Link,
    Observation,
    Purpose,
    Quantities,
)
from gateway.protocol.codec import decode_frame, encode_frame
from gateway.protocol.framing import Received
from gateway.protocol.messages import Battery, Frame, FrameFlags, MessageType, Tilt
from gateway.registry import parse_registry
from gateway.wire import unpack_row
from tests.harness import VALIDATORS

REGISTRY = "cover_id,owner_unit,node_id,input\nC-1,gas,00000001,\nC-2,drainage,00000002,lora0\n"
SPEC_REPORT = bytes.fromhex(
    "A55A1F010100C0FFEE00010001 04FF6A001E 02 02 073A 0302 0E1C 0402 00D7 0602 9F07 0EAE".replace(
        " ", ""
    )
)


def engine(**limits: Any) -> EdgeEngine:
    registry, errors = parse_registry(REGISTRY)
    assert not errors
    ids = count()
    return EdgeEngine(
        gateway_id="gw",
        registry=registry,
        thresholds=Thresholds().merged({"report_count": 2, "offline_after_s": 60}),
        kind_thresholds={},
        slaves={},
        started_at=0.0,
        new_id=lambda: f"id{next(ids)}",
        limits=LimitsConfig(**limits),
    )


def alarms(out: list[Outgoing]) -> list[dict[str, Any]]:
    got = [json.loads(m.payload) for m in out if m.lane is Lane.ALARM]
    for payload in got:
        errors = [e.message for e in VALIDATORS["alarm"].iter_errors(payload)]
        assert not errors, errors
    return got


def readings(out: list[Outgoing]) -> list[dict[str, Any]]:
    got = [json.loads(unpack_row(m.payload)) for m in out if m.lane is Lane.TELEMETRY]
    if got:
        batch = {"msg_id": "b", "sent_at": "2026-01-01T00:00:00.000Z", "count": len(got)}
        errors = [
            e.message for e in VALIDATORS["telemetry"].iter_errors({**batch, "readings": got})
        ]
        assert not errors, errors
    return got


def tilt_obs(device: str, x: float, y: float, z: float, at: float, **kw: Any) -> Observation:
    return Observation(
        DeviceRef("em310-tilt", device),
        "lns",
        at,
        Quantities(tilt_x_deg=x, tilt_y_deg=y, tilt_z_deg=z, battery_pct=100.0, **kw),
        link=Link(rssi_dbm=-100.0, snr_db=7.5),
        counter=int(at),
        counter_modulus=1 << 32,
        raw=bytes([int(at) & 0xFF]),
    )


def frame(node: int, seq: int, *, flags: FrameFlags = FrameFlags.NONE, tilt: float = 0.0) -> bytes:
    """A real SCN-1 frame on the wire (the raw bytes matter for duplicates)."""
    return encode_frame(
        Frame(node, seq, MessageType.REPORT, flags, (Tilt(tilt, 0.0), Battery(3600)))
    )


def heard(raw: bytes, source: str = "lora0", at: float = 0.0) -> FrameHeard:
    return FrameHeard(source, at, Received(decode_frame(raw), raw))


def test_scn1_adapter_gives_quantities_and_keeps_the_wire_records() -> None:
    obs = from_frame(heard(SPEC_REPORT))
    assert obs.device == DeviceRef("scn1", "00C0FFEE")
    assert (obs.quantities.tilt_x_deg, obs.quantities.tilt_y_deg) == (-1.5, 0.3)
    assert obs.quantities.distance_mm == 1850
    assert obs.quantities.battery_mv == 3612.0
    assert obs.counter == 1
    assert obs.purpose is Purpose.REPORT
    assert obs.extra["records"][0]["tlv"] == "tilt"


def test_three_axis_tilt_is_the_angle_from_the_installed_orientation() -> None:
    flat = (5.7, -10.0, 90.82)
    assert tilt_deg(flat, flat) == 0.0
    assert abs(tilt_deg((0.0, 0.0, 0.0), (0.0, 0.0, 90.0)) - 90.0) < 1e-6  # on its edge
    assert abs(tilt_deg((10.0, 0.0, 80.0), (0.0, 0.0, 90.0)) - 10.0) < 0.01


def test_lifted_tilt_sensor_cover_raises_cover_open_with_evidence_and_rezero_works() -> None:
    eng = engine()
    dev = "24e124710c401234"
    assert alarms(eng.observe(tilt_obs(dev, 5.7, -10.0, 90.82, 1))) == []  # baseline
    (reading,) = readings(eng.observe(tilt_obs(dev, 6.0, -10.0, 90.8, 2)))
    assert reading["source"]["type"] == "device"
    assert reading["quantities"]["tilt_z_deg"] == 90.8
    assert reading["derived"]["tilt_deg"] < 1
    lifted = [eng.observe(tilt_obs(dev, 80.0, 0.0, 10.0, t)) for t in (3, 4)]
    (opened,) = alarms(lifted[1])
    assert (opened["kind"], opened["state"], opened["registered"]) == (
        "cover_open",
        "raised",
        False,
    )
    assert opened["evidence"]["tilt_deg"] > 40
    assert opened["source"]["device_id"] == dev
    assert not [a for a in alarms(lifted[0] + lifted[1]) if a["kind"] == "tilt"]  # one incident
    back = [eng.observe(tilt_obs(dev, 5.7, -10.0, 90.82, t)) for t in (5, 6)]
    assert [(a["kind"], a["state"]) for a in alarms(back[1])] == [("cover_open", "cleared")]
    eng.rezero(f"em310-tilt:{dev}")
    assert alarms(eng.observe(tilt_obs(dev, 20.0, -10.0, 85.0, 7))) == []  # the new baseline


def test_displaced_cover_opens_at_once_and_device_bits_are_evidence_only() -> None:
    eng = engine()
    level = Observation(
        DeviceRef("em400-mud", "24e124713d221234"),
        "lns",
        1.0,
        Quantities(distance_mm=2116, cover_displaced=True, device_alarms=frozenset({"x"})),
        counter=1,
        raw=b"\x01",
    )
    got = alarms(eng.observe(level))
    assert [(a["kind"], a["state"]) for a in got] == [("cover_open", "raised")]
    assert got[0]["evidence"] == {"cover_displaced": True, "device_alarms": ["x"]}
    tilt_bits = tilt_obs("d2", 0.0, 0.0, 90.0, 1, device_alarms=frozenset({"device_alarm_x"}))
    assert alarms(eng.observe(tilt_bits)) == []  # the device's bit alone raises nothing


def test_forged_sequence_number_cannot_hide_the_real_frame() -> None:
    eng = engine()
    forged = frame(2, 9, tilt=0.0)
    real = frame(2, 9, flags=FrameFlags.NODE_ALARM, tilt=30.0)
    retry = frame(2, 9, flags=FrameFlags.NODE_ALARM | FrameFlags.RETRANSMISSION, tilt=30.0)
    assert readings(eng.handle(heard(forged)))
    assert readings(eng.handle(heard(real)))  # processed, not a "duplicate"
    assert eng.stats.sequence_anomalies == 1
    assert eng.handle(heard(retry)) == []  # the real one's retry: a true duplicate
    assert eng.handle(heard(forged)) == []
    assert eng.stats.duplicates == 2


def test_a_node_is_taken_only_from_its_input() -> None:
    eng = engine()
    assert eng.handle(heard(frame(2, 1), source="udp0")) == []  # registry: lora0 only
    assert readings(eng.handle(heard(frame(2, 2), source="lora0")))
    assert readings(eng.handle(heard(frame(0x77, 1), source="lora1")))  # unregistered: bound
    assert eng.handle(heard(frame(0x77, 2), source="udp0")) == []
    assert eng.stats.wrong_input == 2
    # The impostor's numbers leave no trace: the node's own frame 3 is no anomaly.
    assert eng.handle(heard(frame(2, 3, tilt=9.0), source="udp0")) == []
    assert readings(eng.handle(heard(frame(2, 3), source="lora0")))
    assert eng.stats.sequence_anomalies == 0


def test_polled_sensors_are_paced_by_the_gateway_not_rate_limited() -> None:
    eng = engine(device_frames_per_minute=1)
    outs = [eng.handle(SlaveRead("rs485-0", 7, i / 4, {"level": 0.5})) for i in range(4 * 130)]
    assert sum(len(readings(o)) for o in outs) == 3  # at 0 s, 60 s, 120 s
    assert eng.stats.rate_limited == 0


def test_unregistered_nodes_are_bounded_and_never_go_offline() -> None:
    eng = engine(unregistered_nodes=3)
    rows: dict[str, str | None] = {}
    for node in range(100, 120):
        eng.handle(heard(frame(node, 1), source="lora0", at=float(node)))
        rows.update(eng.take_state())
    assert len(eng.devices.unregistered) == 3
    kept = {k for k, v in rows.items() if v is not None}
    tracked = {f"{n:08X}" for n in (117, 118, 119)}
    assert kept
    assert all(k.split("|")[0][-8:] in tracked for k in kept)  # the forgotten: rows deleted
    offline = alarms(eng.tick(10_000.0))
    assert sorted(a["cover"]["cover_id"] for a in offline) == ["C-1", "C-2"]  # registered only
    assert alarms(eng.tick(20_000.0)) == []  # raised once; nothing left to check


def test_frames_over_the_rate_are_judged_but_not_forwarded() -> None:
    eng = engine(device_frames_per_minute=2)
    outs = [eng.handle(heard(frame(1, s, tilt=40.0 * (s > 1)), at=0.0)) for s in range(1, 5)]
    assert [len(readings(o)) for o in outs] == [1, 1, 0, 0]
    assert eng.stats.rate_limited == 2
    assert any(a["kind"] == "tilt" for a in alarms(outs[2]))  # still raised, never held back


def test_state_rows_restore_alarms_baselines_and_duplicates() -> None:
    eng = engine()
    for seq in (1, 2, 3):
        eng.handle(heard(frame(2, seq, tilt=0.0 if seq == 1 else 30.0)))
    rows = {k: v for k, v in eng.take_state().items() if v is not None}
    assert all(k.startswith(state.PREFIX) for k in rows)
    again = engine()
    again.load_state(sorted(rows.items()))
    assert again.active_alarms() == eng.active_alarms()
    assert again.handle(heard(frame(2, 3, tilt=30.0))) == []  # heard before the restart
    assert again.stats.duplicates == 1
    assert alarms(again.handle(heard(frame(2, 4, tilt=0.0)))) == []  # one flat report: clearing


def test_recent_frames_are_bounded_in_bytes() -> None:
    eng = engine(recent_frames_bytes=10_000)
    for seq in range(1, 200):
        eng.handle(heard(frame(1, seq)))
    assert eng._recent.bytes <= 10_000
    got = eng.recent_frames(1, 5)
    assert [f["seq"] for f in got] == [195, 196, 197, 198, 199]


async def test_the_whole_state_blob_of_earlier_versions_is_migrated_once(tmp_path: Path) -> None:
    config = parse_config({"gateway": {"id": "gw", "state_dir": str(tmp_path)}}, base_dir=tmp_path)
    blob = {
        "machines": {
            "node:00000009|tilt|": {
                "state": "active",
                "since": 1.0,
                "count": 2,
                "alarm_id": "a1",
                "raised_at": 1.0,
            }
        },
        "baselines": {"node:00000009": [1.0, 2.0]},
        "kind_overrides": {},
        "cover_overrides": {"C-9": {"tilt_deg": 20.0}},
        "maintenance_until": {"C-9": 99.0},
    }
    old = Gateway(config)
    with old.queue:
        old.queue.put_many([], state={state.LEGACY_KEY: json.dumps(blob)})
    gateway = Gateway(config)
    with gateway.queue:
        gateway._restore_engine()
        assert await gateway._flush()
        assert gateway.queue.get_state(state.LEGACY_KEY) is None
        keys = [k for k, _ in gateway.queue.state_items(state.PREFIX)]
    assert keys == [
        "engine/b/node:00000009|",
        "engine/m/node:00000009|tilt|",
        "engine/mt/C-9",
        "engine/oc/C-9",
    ]
    restarted = Gateway(config)
    with restarted.queue:
        restarted._restore_engine()
    assert [a["alarm_id"] for a in restarted.engine.active_alarms()] == ["a1"]
    assert restarted.engine.cover_overrides == {"C-9": {"tilt_deg": 20.0}}


def test_extra_source_block_is_kept_for_devices_that_give_one() -> None:
    eng = engine()
    obs = Observation(
        DeviceRef("x", "1"),
        "in",
        1.0,
        extra=MappingProxyType({"source": {"type": "device", "model": "x", "device_id": "1"}}),
    )
    (reading,) = readings(eng.observe(obs))
    assert reading["source"] == {"type": "device", "model": "x", "device_id": "1"}


finite = st.floats(min_value=-400, max_value=400, allow_nan=False)
maybe = st.none() | finite
observations = st.builds(
    Observation,
    device=st.builds(
        DeviceRef,
        st.sampled_from(["scn1", "em310-tilt", "em400-mud"]),
        st.sampled_from(["00000001", "00000002", "24e124710c401234", "x|y"]),
    ),
    source=st.sampled_from(["lora0", "lns"]),
    at=st.floats(min_value=0, max_value=1e6),
    quantities=st.builds(
        Quantities,
        tilt_x_deg=maybe,
        tilt_y_deg=maybe,
        tilt_z_deg=maybe,
        distance_mm=st.none() | st.floats(min_value=0, max_value=20_000),
        battery_pct=st.none() | st.floats(min_value=0, max_value=100),
        battery_mv=st.none() | st.floats(min_value=0, max_value=5000),
        cover_displaced=st.none() | st.booleans(),
        device_alarms=st.frozensets(st.sampled_from(["low_battery", "node_alarm", "x"])),
    ),
    counter=st.none() | st.integers(0, 65535),
    raw=st.binary(max_size=8),
    purpose=st.sampled_from(Purpose),
    judges_opening=st.booleans(),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(observations, max_size=25))
def test_any_observations_are_taken_and_their_state_rows_restore_exactly(
    obs: list[Observation],
) -> None:
    eng = engine(unregistered_nodes=2)
    rows: dict[str, str | None] = {}
    for o in obs:
        eng.observe(o)
        rows.update(eng.take_state())
    eng.tick(2e6)
    rows.update(eng.take_state())
    again = engine(unregistered_nodes=2)
    again.load_state(sorted((k, v) for k, v in rows.items() if v is not None))
    assert again.snapshot() == eng.snapshot()
    assert again.active_alarms() == eng.active_alarms()


def test_a_damaged_row_costs_that_row_only() -> None:
    eng = engine()
    eng.load_state([("engine/m/C-1|tilt|", "{not json"), ("engine/mt/C-1", "5.0")])
    assert eng.maintenance_until == {"C-1": 5.0}
    assert eng.take_state() == {"engine/m/C-1|tilt|": None}


def test_non_finite_quantities_never_reach_the_wire_as_nan() -> None:
    eng = engine()
    obs = Observation(
        DeviceRef("em400-mud", "1"),
        "lns",
        1.0,
        Quantities(distance_mm=float("nan"), temperature_c=float("inf"), battery_pct=50.0),
    )
    (reading,) = readings(eng.observe(obs))
    assert reading["quantities"]["distance_mm"] is None
    assert reading["quantities"]["temperature_c"] is None
    row = unpack_row(eng.observe(obs)[0].payload)
    assert json.loads(row, parse_constant=refuse_constant) is not None


def refuse_constant(name: str) -> None:
    raise AssertionError(f"{name} in JSON")


def test_unregistered_devices_come_back_in_the_order_they_were_heard() -> None:
    eng = engine(unregistered_nodes=3)
    rows: dict[str, str | None] = {}
    for node, at in ((0x30, 3.0), (0x10, 1.0), (0x20, 2.0)):
        eng.handle(heard(frame(node, 1), at=at))
        rows.update(eng.take_state())
    again = engine(unregistered_nodes=2)  # the limit lowered: the least recent goes
    again.load_state(sorted((k, v) for k, v in rows.items() if v is not None))
    assert [d.device_id for d in again.devices.unregistered] == ["00000020", "00000030"]
    assert again.take_state().get("engine/d/scn1:00000010", "kept") is None


@given(
    st.integers(0, int(FrameFlags.NODE_ALARM | FrameFlags.RETRANSMISSION | FrameFlags.LOW_BATTERY))
)
def test_the_alarm_bits_of_the_flags_are_the_device_alarms(bits: int) -> None:
    frame = replace(decode_frame(SPEC_REPORT), flags=FrameFlags(bits))
    obs = from_frame(heard(encode_frame(frame)))
    expected = {"node_alarm"} if bits & FrameFlags.NODE_ALARM else set()
    expected |= {"low_battery"} if bits & FrameFlags.LOW_BATTERY else set()
    assert obs.quantities.device_alarms == expected
