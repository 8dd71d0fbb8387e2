"""The engine's routine path for SCN-1 frames against the general path it stands in for.

``EdgeEngine.handle`` takes a REPORT or HEARTBEAT frame without building an
``Observation``; every other input goes through ``observe``. Fed the same
receptions, an engine that takes every frame the general way
(``observe(from_frame(...))``) must say and store exactly the same.
"""

from __future__ import annotations

import json
from itertools import count
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.config import LimitsConfig, Thresholds
from gateway.edge import adapters, render
from gateway.edge.engine import EdgeEngine
from gateway.edge.render import Subject
from gateway.edge.rules import battery, tilt, water
from gateway.events import FrameHeard
from gateway.observation import Quantities
from gateway.protocol.codec import decode_frame, encode_frame
from gateway.protocol.framing import Received
from gateway.protocol.messages import (
    Battery,
    Event,
    EventCode,
    Frame,
    FrameFlags,
    MessageType,
    Tilt,
    WaterDepth,
)
from gateway.protocol.render import records_to_dicts
from gateway.registry import Cover, OwnerUnit, Registry
from gateway.wire import unpack_row
from tests.strategies import frames, records

NODES = [0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0xFFFFFFFF]
# Records that move alarms, often enough for a short sequence to raise and clear them.
alarming = st.sampled_from(
    [
        Event(EventCode.SENSOR_FAULT, 0, 1),
        Event(EventCode.COVER_OPENED, 5, 4500),
        Event(EventCode.COVER_CLOSED, 0, 10),
        Event(EventCode.WATER_ALARM, 0, 150),
        Tilt(40.0, 1.0),
        Tilt(0.5, -0.5),
        WaterDepth(120),
        WaterDepth(1800),
        WaterDepth(None),
        Battery(3000),
        Battery(3600),
    ]
)

# Frames of a few nodes, seqs that repeat and jump, every type and flag: the
# sequences exercise duplicates (exact and retransmitted), anomalies, losses,
# restarts, the input binding, the strangers' LRU and the alarm machines.
node_frames = st.builds(
    Frame,
    node_id=st.sampled_from(NODES),
    seq=st.sampled_from([0, 1, 2, 3, 7, 0xFFFE, 0xFFFF]),
    msg_type=st.sampled_from(MessageType),
    flags=st.builds(FrameFlags, st.integers(0, 7)),
    records=st.lists(alarming | records, max_size=6).map(tuple),
)
steps = st.lists(
    st.tuples(
        node_frames,
        st.sampled_from(["lora0", "lora1"]),
        st.sampled_from([0.0, 1.0, 30.0, 700.0]),  # time since the previous frame
        st.sampled_from([(None, None), (-97, None), (-60, 7.5)]),  # the dialect's rssi, snr
        st.booleans(),  # a commit (state taken) after this frame
        st.booleans(),  # a tick after this frame
    ),
    max_size=40,
)


def _registry() -> Registry:
    registry = Registry()
    for cover in (
        Cover("C-10", OwnerUnit.GAS, node_id=0x10),
        Cover("C-11", OwnerUnit.DRAINAGE, node_id=0x11, inputs=("lora1",)),
        Cover("C-12", OwnerUnit.HEAT, node_id=0x12, baseline_deg=(1.0, -1.0)),
        Cover(
            "C-13",
            OwnerUnit.POWER,
            node_id=0x13,
            sensor_depth_mm=900.0,
            overrides={"tilt_deg": 3.0, "report_count": 1},
        ),
    ):
        assert registry.add(cover) is None
    return registry


def _engine() -> EdgeEngine:
    ids = count()
    return EdgeEngine(
        gateway_id="gw",
        registry=_registry(),
        thresholds=Thresholds().merged({"offline_after_s": 60.0}),
        kind_thresholds={},
        slaves={},
        started_at=1_800_000_000.0,
        new_id=lambda: f"id{next(ids)}",
        limits=LimitsConfig(unregistered_nodes=2, device_frames_per_minute=3),
    )


def _said(out: list[Any]) -> list[tuple[str, str, str, bytes]]:
    return [(m.msg_id, m.lane.value, m.topic, m.payload) for m in out]


def _step(node: int, seq: int, kind: MessageType, *records: Any) -> Any:
    return (
        Frame(node, seq, kind, FrameFlags.NONE, records),
        "lora0",
        1.0,
        (None, None),
        False,
        False,
    )


@settings(max_examples=300, deadline=None)
@given(steps)
@example(  # a stranger's node reports a fault, then a normal report ends it
    [
        _step(0x14, 1, MessageType.EVENT, Event(EventCode.SENSOR_FAULT, 0, 1)),
        _step(0x14, 2, MessageType.REPORT, Tilt(0.5, -0.5)),
    ]
)
@example(  # a registered cover opened, then flat again; then silent past its deadline
    [
        _step(0x10, 1, MessageType.EVENT, Event(EventCode.COVER_OPENED, 5, 4500)),
        _step(0x10, 2, MessageType.REPORT, Tilt(40.0, 1.0)),
        _step(0x10, 3, MessageType.REPORT, Tilt(0.5, -0.5)),
        _step(0x10, 4, MessageType.HEARTBEAT),
        (*_step(0x10, 5, MessageType.REPORT, Tilt(0.5, -0.5))[:2], 700.0, (-80, 5.0), True, True),
    ]
)
def test_the_routine_path_says_and_stores_what_the_general_path_does(
    sequence: list[tuple[Frame, str, float, tuple[int | None, float | None], bool, bool]],
) -> None:
    routine, general = _engine(), _engine()
    at = 1_800_000_000.0
    for frame, source, gap, (rssi, snr), commit, tick in sequence:
        at += gap
        raw = encode_frame(frame)
        event = FrameHeard(source, at, Received(decode_frame(raw), raw, rssi, snr))
        assert _said(routine.handle(event)) == _said(general.observe(adapters.from_frame(event)))
        if commit:
            assert routine.take_state() == general.take_state()
        if tick:
            assert _said(routine.tick(at)) == _said(general.tick(at))
    assert routine.take_state() == general.take_state()
    assert routine.stats == general.stats
    assert routine.devices.items() == general.devices.items()
    assert routine.snapshot() == general.snapshot()
    assert routine.active_alarms() == general.active_alarms()
    for node in NODES:
        assert routine.recent_frames(node, 50) == general.recent_frames(node, 50)
    later = at + 10_000
    assert _said(routine.tick(later)) == _said(general.tick(later))


@given(st.binary(max_size=80))
def test_the_fingerprint_is_the_frame_without_crc_and_retransmission_bit(raw: bytes) -> None:
    if len(raw) <= 13:
        assert adapters.fingerprint(raw) == raw
        return
    plain = bytearray(raw[:-2])
    plain[11] &= ~int(FrameFlags.RETRANSMISSION) & 0xFF
    assert adapters.fingerprint(raw) == bytes(plain)


@given(
    frames,
    st.sampled_from(["lora0", "at"]),
    st.none() | st.integers(-140, 0),
    st.none() | st.floats(-20, 20),
)
def test_the_lean_node_source_is_the_observation_s_source_made_lean(
    frame: Frame, source: str, rssi: int | None, snr: float | None
) -> None:
    raw = encode_frame(frame)
    event = FrameHeard(source, 1.0, Received(decode_frame(raw), raw, rssi, snr))
    obs = adapters.from_frame(event)
    node_hex = f"{frame.node_id:08X}"
    assert adapters.lean_node_source(event, node_hex) == render.lean_source(obs.extra["source"])


@given(
    frames,
    st.booleans(),
    st.dictionaries(
        st.sampled_from(["tilt_deg", "water_distance_mm"]),
        st.none() | st.floats(allow_nan=True) | st.integers(0, 5000),
    ),
)
def test_a_node_reading_is_the_reading_of_its_observation(
    frame: Frame, registered: bool, derived: dict[str, Any]
) -> None:
    raw = encode_frame(frame)
    event = FrameHeard("lora0", 1_800_000_000.25, Received(decode_frame(raw), raw, -90, 7.0))
    obs = adapters.from_frame(event)
    cover = Cover("C-1", OwnerUnit.GAS, node_id=frame.node_id) if registered else None
    subject = Subject("C-1" if cover else f"node:{frame.node_id:08X}", cover, obs.device)
    fast = render.node_reading(
        "r1",
        event.at,
        subject,
        source=adapters.lean_node_source(event, obs.device.device_id),
        records=records_to_dicts(frame.records),
        derived=dict(derived),
    )
    assert unpack_row(fast) == unpack_row(render.reading(obs, "r1", subject, dict(derived)))


_thresholds = st.builds(
    Thresholds,
    tilt_deg=st.floats(0.5, 90),
    water_high_mm=st.floats(0, 2000),
    water_overflow_mm=st.floats(0, 2000),
    low_battery_mv=st.floats(2500, 3600),
)


@given(
    _thresholds,
    st.floats(0, 180),
    st.floats(0, 5000) | st.just(float("inf")),
    st.none() | st.floats(2000, 4200),
    st.none() | st.floats(0, 100),
    st.frozensets(st.sampled_from(["low_battery", "node_alarm"])),
)
def test_a_quiet_rule_leaves_out_exactly_the_checks_that_are_not_bad(
    thr: Thresholds,
    tilt_now: float,
    distance: float,
    mv: float | None,
    pct: float | None,
    bits: frozenset[str],
) -> None:
    rule = object()  # a rule is only carried along
    q = Quantities(battery_mv=mv, battery_pct=pct, device_alarms=bits)
    loud = [
        tilt.check(tilt_now, thr, rule, ""),  # type: ignore[arg-type]
        *water.checks(distance, thr, rule, ""),  # type: ignore[arg-type]
        battery.check(q, thr, rule, ""),  # type: ignore[arg-type]
    ]
    quiet = [
        tilt.check(tilt_now, thr, rule, "", quiet=True),  # type: ignore[arg-type]
        *water.checks(distance, thr, rule, "", quiet=True),  # type: ignore[arg-type]
        battery.check(q, thr, rule, "", quiet=True),  # type: ignore[arg-type]
    ]
    assert [c for c in quiet if c is not None] == [c for c in loud if c is not None and c.bad]


def test_a_stranger_pushed_out_before_the_commit_costs_the_store_nothing() -> None:
    eng = _engine()  # two strangers tracked at once
    for node in (0x20, 0x21, 0x22, 0x23):
        raw = encode_frame(Frame(node, 1, MessageType.REPORT, FrameFlags.NONE, ()))
        out = eng.handle(FrameHeard("lora0", 1.0, Received(decode_frame(raw), raw)))
        assert json.loads(unpack_row(out[0].payload))["source"]["node"] == f"{node:08X}"
    rows = eng.take_state()
    # Only the two still tracked are written; the two forgotten were never stored.
    assert sorted(rows) == ["engine/d/scn1:00000022", "engine/d/scn1:00000023"]
    assert all(v is not None for v in rows.values())
    # Once stored, forgetting one deletes its row.
    raw = encode_frame(Frame(0x24, 1, MessageType.REPORT, FrameFlags.NONE, ()))
    eng.handle(FrameHeard("lora0", 2.0, Received(decode_frame(raw), raw)))
    rows = eng.take_state()
    assert rows["engine/d/scn1:00000022"] is None
    assert rows["engine/d/scn1:00000024"] is not None
