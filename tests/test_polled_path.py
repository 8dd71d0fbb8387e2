"""The engine's quiet path for polled readings against the general path it stands in for.

``EdgeEngine.handle`` does not judge again a polled reading that repeats the
sensor's last one when that judgement changed nothing and nothing it was
judged with has changed since. Fed the same inputs and commands, an engine
that judges every polled reading the general way
(``observe(from_slave_read(...))``) must say and store exactly the same.
"""

from __future__ import annotations

from itertools import count
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.buffer.queue import Lane
from gateway.config import LimitsConfig, SlaveConfig, SlaveRole, Thresholds
from gateway.edge import adapters
from gateway.edge.engine import EdgeEngine
from gateway.events import FrameHeard, SlaveFailed, SlaveRead
from gateway.observation import Observation
from gateway.protocol.codec import decode_frame, encode_frame
from gateway.protocol.framing import Received
from gateway.protocol.messages import Event, EventCode, Frame, FrameFlags, MessageType, Tilt
from gateway.protocol.modbus_profiles import QDY30A_LEVEL, WIT_INCLINOMETER
from gateway.registry import Cover, OwnerUnit, Registry

TILT_A, LEVEL_B, TILT_STRANGER, LEVEL_ELSEWHERE = (
    ("rs485-0", 80),
    ("rs485-0", 1),
    ("rs485-1", 5),
    ("rs485-0", 2),
)
SLAVES = (TILT_A, LEVEL_B, TILT_STRANGER, LEVEL_ELSEWHERE)
START = 1_800_000_000.0


def _wit(roll: float, pitch: float) -> dict[str, float]:
    return {"roll_deg": roll, "pitch_deg": pitch, "yaw_deg": 12.5, "temperature_c": 21.0}


TILTS = [_wit(0.5, -0.3), _wit(-0.0, 0.0), _wit(0.0, -0.0), _wit(20.0, 1.0), _wit(0.6, -0.3)]
LEVELS = [{"level": 0.1}, {"level": 0.6}, {"level": 0.9}, {"level": 0.0}, {"level": -0.0}]


def _registry(depth_mm: float = 1000.0) -> Registry:
    registry = Registry()
    for cover in (
        # A cover with its own SCN-1 node and a wired inclinometer: one subject, two devices.
        Cover("C-1", OwnerUnit.GAS, cover_kind="round", node_id=0x10, modbus=(TILT_A,)),
        Cover("C-2", OwnerUnit.DRAINAGE, modbus=(LEVEL_B,), sensor_depth_mm=depth_mm),
        # Bound to a radio input: its slave's readings are refused.
        Cover("C-3", OwnerUnit.HEAT, modbus=(LEVEL_ELSEWHERE,), inputs=("lora0",)),
    ):
        assert registry.add(cover) is None
    return registry


def _slaves(level_role: SlaveRole = SlaveRole.WATER_LEVEL) -> dict[tuple[str, int], SlaveConfig]:
    return {
        TILT_A: SlaveConfig(80, WIT_INCLINOMETER, SlaveRole.TILT),
        LEVEL_B: SlaveConfig(1, QDY30A_LEVEL, level_role),
        TILT_STRANGER: SlaveConfig(5, WIT_INCLINOMETER, SlaveRole.TILT),
        LEVEL_ELSEWHERE: SlaveConfig(2, QDY30A_LEVEL, SlaveRole.WATER_LEVEL),
    }


SLAVES_AS = {role: _slaves(role) for role in (SlaveRole.WATER_LEVEL, SlaveRole.NONE)}
THRESHOLDS = Thresholds().merged({"offline_after_s": 600.0, "hold_s": 2.0})


def _engine() -> EdgeEngine:
    ids = count()
    return EdgeEngine(
        gateway_id="gw",
        registry=_registry(),
        thresholds=THRESHOLDS,
        kind_thresholds={},
        slaves=SLAVES_AS[SlaveRole.WATER_LEVEL],
        started_at=START,
        new_id=lambda: f"id{next(ids)}",
        limits=LimitsConfig(),
    )


def _frame(event: EventCode | None, seq: int, at: float) -> FrameHeard:
    records = (Event(event, 5, 4500),) if event is not None else (Tilt(0.5, -0.5),)
    kind = MessageType.EVENT if event is not None else MessageType.REPORT
    raw = encode_frame(Frame(0x10, seq, kind, FrameFlags.NONE, records))
    return FrameHeard("lora0", at, Received(decode_frame(raw), raw, -90, 7.0))


def _said(out: list[Any]) -> list[tuple[str, str, str, bytes]]:
    return [(m.msg_id, m.lane.value, m.topic, m.payload) for m in out]


reads = st.tuples(
    st.just("read"),
    st.sampled_from(SLAVES),
    st.integers(0, len(TILTS) - 1),
    st.sampled_from([0.0, 1.0, 1.0, 1.0, 3.0, 61.0]),  # time since the previous step
)
others = st.one_of(
    st.tuples(st.just("fail"), st.sampled_from(SLAVES)),
    st.tuples(
        st.just("frame"), st.sampled_from([None, EventCode.COVER_OPENED, EventCode.COVER_CLOSED])
    ),
    st.tuples(
        st.just("thresholds"),
        st.sampled_from([("C-1", None), ("C-2", None), (None, "round"), (None, None)]),
        st.sampled_from([{"tilt_deg": 0.5}, {"water_high_mm": 950.0}, {"hold_s": 0.0}]),
    ),
    st.tuples(st.just("clear"), st.sampled_from([("C-1", None), (None, "round"), (None, None)])),
    st.tuples(st.just("rezero"), st.sampled_from(["C-1", "rs485-1:5"])),
    st.tuples(st.just("maintenance"), st.sampled_from(["C-1", "C-2"])),
    st.tuples(
        st.just("reconfigure"),
        st.sampled_from([None, 1000.0, 550.0]),  # the sensor depth of C-2; None: the same registry
        st.sampled_from([SlaveRole.WATER_LEVEL, SlaveRole.NONE]),
    ),
    st.tuples(st.just("commit")),
    st.tuples(st.just("tick")),
)
steps = st.lists(st.one_of(reads, reads, others), max_size=80)


def _read(slave: tuple[str, int], which: int, at: float) -> SlaveRead:
    # The driver hands on a new dict each poll, equal to the last one for a sensor at rest.
    values = TILTS[which] if slave in (TILT_A, TILT_STRANGER) else LEVELS[which]
    return SlaveRead(slave[0], slave[1], at, dict(values))


def _run(quiet: EdgeEngine, general: EdgeEngine, sequence: list[tuple[Any, ...]]) -> None:
    at, seq = START, 0
    # What a bus would be told after each read (gateway/daemon.py, Gateway._hush): the
    # values, until when, and the engine's epoch then.
    grants: dict[tuple[str, int], tuple[dict[str, float], float, int]] = {}
    for step in sequence:
        match step:
            case ("read", slave, which, gap):
                at += gap
                event = _read(slave, which, at)
                grant = grants.get(slave)
                kept = (
                    grant is not None
                    and grant[0] == event.values
                    and at < grant[1]
                    and quiet.epoch == grant[2]
                )
                full = general.observe(adapters.from_slave_read(event, general.slaves.get(slave)))
                said = quiet.handle(event)
                assert _said(said) == _said(full)
                if kept:  # a bus keeps it from the engine: it had to be a quiet repeat
                    assert said == []
                    assert quiet.epoch == grant[2]  # the quiet path, nothing judged
                until = quiet.quiet_until(slave, event.values)
                if until is not None:
                    grants[slave] = (dict(event.values), until, quiet.epoch)
            case ("fail", slave):
                event = SlaveFailed(slave[0], slave[1], at, "no reply", 3)
                assert _said(quiet.handle(event)) == _said(general.handle(event))
            case ("frame", code):
                seq += 1
                event = _frame(code, seq, at)
                assert _said(quiet.handle(event)) == _said(general.handle(event))
            case ("thresholds", (cover_id, kind), values):
                for engine in (quiet, general):
                    engine.set_thresholds(cover_id=cover_id, cover_kind=kind, values=values)
            case ("clear", (cover_id, kind)):
                for engine in (quiet, general):
                    engine.clear_thresholds(cover_id=cover_id, cover_kind=kind, keys=None)
            case ("rezero", key):
                for engine in (quiet, general):
                    engine.rezero(key)
            case ("maintenance", cover_id):
                for engine in (quiet, general):
                    engine.set_maintenance(cover_id, at + 5.0)
            case ("reconfigure", depth, role):
                for engine in (quiet, general):
                    registry = engine.registry if depth is None else _registry(depth)
                    engine.reconfigure(registry, THRESHOLDS, {}, SLAVES_AS[role])
            case ("commit",):
                assert quiet.take_state() == general.take_state()
            case ("tick",):
                assert _said(quiet.tick(at)) == _said(general.tick(at))
    assert quiet.take_state() == general.take_state()
    assert quiet.stats == general.stats
    assert quiet.devices.items() == general.devices.items()
    assert quiet.snapshot() == general.snapshot()
    assert quiet.active_alarms() == general.active_alarms()
    later = at + 10_000
    assert _said(quiet.tick(later)) == _said(general.tick(later))


def _reads(slave: tuple[str, int], *which: int) -> list[tuple[Any, ...]]:
    return [("read", slave, w, 1.0) for w in which]


@settings(max_examples=500, deadline=None)
@given(steps)
@example([*_reads(TILT_A, 0, 0), ("rezero", "C-1"), *_reads(TILT_A, 0, 0)])  # a new baseline
@example(  # the slave's role changes under the same registry
    [
        ("reconfigure", None, SlaveRole.NONE),
        *_reads(LEVEL_B, 1, 1),
        ("reconfigure", None, SlaveRole.WATER_LEVEL),
        *_reads(LEVEL_B, 1, 1),
    ]
)
@example(
    [*_reads(LEVEL_B, 0, 0), ("reconfigure", 550.0, SlaveRole.WATER_LEVEL), *_reads(LEVEL_B, 0)]
)
@example(  # opened: no baseline recorded; closed by the node's normal reports, then one
    [
        ("frame", EventCode.COVER_OPENED),
        *_reads(TILT_A, 0, 0),
        *[("frame", None)] * 3,
        *_reads(TILT_A, 0, 0),
    ]
)
@example(  # opened: no baseline recorded; closed by the tilt, then a baseline
    [("frame", EventCode.COVER_OPENED), *_reads(TILT_A, 2, 2, 2, 2, 2, 2, 2), ("tick",)]
)
@example(_reads(TILT_A, 0, 0, 0, 3, 3, 3, 3, 0, 0, 0, 0))  # tilted past the hold, then back
@example(
    [
        *_reads(LEVEL_B, 0, 0),
        ("thresholds", ("C-2", None), {"water_high_mm": 950.0}),
        *_reads(LEVEL_B, 0),
    ]
)
@example([*_reads(TILT_A, 0, 0), ("frame", EventCode.COVER_OPENED), *_reads(TILT_A, 0, 0)])
@example([*_reads(TILT_A, 0, 0), ("rezero", "C-1"), *_reads(TILT_A, 4, 4, 4, 4)])
@example([*_reads(LEVEL_ELSEWHERE, 1, 1), *_reads(TILT_STRANGER, 1, 2, 2)])
def test_the_quiet_path_says_and_stores_what_the_general_path_does(
    sequence: list[tuple[Any, ...]],
) -> None:
    _run(_engine(), _engine(), sequence)


def test_a_bus_is_told_to_keep_only_repeats_the_engine_would_not_judge() -> None:
    """``quiet_until`` and ``epoch``: the grant ends with the telemetry interval and moves
    with every command, input or tick that may change the judgement."""
    engine = _engine()
    engine.handle(_read(TILT_A, 0, START))
    assert engine.quiet_until(TILT_A, TILTS[0]) is None  # judged once: not known quiet yet
    engine.handle(_read(TILT_A, 0, START + 1))
    until = engine.quiet_until(TILT_A, TILTS[0])
    assert until == START + 60.0  # its telemetry went at START; the next is due then
    assert engine.quiet_until(TILT_A, TILTS[1]) is None  # other values: judged
    for change in (
        lambda: engine.set_thresholds(cover_id="C-1", cover_kind=None, values={"tilt_deg": 5.0}),
        lambda: engine.rezero("C-1"),
        lambda: engine.set_maintenance("C-1", START + 5),
        lambda: engine.handle(_frame(None, 1, START + 2)),
        lambda: engine.handle(SlaveFailed(*LEVEL_B, START + 2, "no reply", 1)),
    ):
        epoch = engine.epoch
        change()
        assert engine.epoch > epoch
    engine.handle(_read(TILT_A, 0, START + 3))  # judged again after the changes
    engine.handle(_read(TILT_A, 0, START + 4))  # the quiet path
    assert engine.quiet_until(TILT_A, TILTS[0]) is not None
    epoch = engine.epoch
    assert engine.handle(_read(TILT_A, 0, START + 5)) == []
    assert engine.epoch == epoch  # a quiet repeat moves nothing


def test_a_sensor_at_rest_is_not_judged_again_until_something_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The quiet path is taken: while it holds, no observation is made for the engine to judge."""
    engine = _engine()
    assert [m.lane for m in engine.handle(_read(TILT_A, 0, START))] == [Lane.TELEMETRY]
    assert engine.handle(_read(TILT_A, 0, START + 0.5)) == []  # a repeat: judged, remembered
    judged: list[SlaveRead] = []
    general = adapters.from_slave_read

    def observed(event: SlaveRead, slave: SlaveConfig | None) -> Observation:
        judged.append(event)
        return general(event, slave)

    monkeypatch.setattr(adapters, "from_slave_read", observed)
    for i in range(1, 30):
        assert engine.handle(_read(TILT_A, 0, START + i)) == []
    assert judged == []
    state = engine.devices.get(adapters.modbus_device(*TILT_A))
    assert state is not None
    assert state.last_seen == START + 29  # heard, all the same
    engine.handle(_read(TILT_A, 4, START + 30))  # another value: judged
    engine.set_thresholds(cover_id="C-1", cover_kind=None, values={"tilt_deg": 5.0})
    engine.handle(_read(TILT_A, 4, START + 31))  # the same value, other thresholds: judged
    engine.handle(_read(TILT_A, 4, START + 32))
    engine.handle(_read(TILT_A, 4, START + 60))  # telemetry due: judged
    assert [e.at - START for e in judged] == [30, 31, 60]
