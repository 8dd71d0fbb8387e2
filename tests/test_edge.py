"""Edge logic without I/O: debounce, hysteresis, sequence numbers, the engine's rules."""

from __future__ import annotations

import json
from itertools import count
from typing import Any

import pytest

from gateway.buffer.queue import Lane, Outgoing
from gateway.config import Thresholds
from gateway.edge.alarm import AlarmMachine, AlarmState, Debounce, Transition
from gateway.edge.engine import EdgeEngine
from gateway.edge.seqtrack import SeqTracker
from gateway.events import FrameHeard, SlaveFailed
from gateway.protocol.framing import Received
from gateway.protocol.messages import (
    Battery,
    Event,
    EventCode,
    Frame,
    FrameFlags,
    Gas,
    GasKind,
    MessageType,
    Record,
    Tilt,
)
from gateway.registry import parse_registry
from gateway.wire import unpack_row


def test_time_debounce_ignores_a_lorry() -> None:
    m = AlarmMachine()
    rule = Debounce(hold_s=3.0)
    assert m.observe(bad=True, good=False, at=0.0, rule=rule) is None
    assert m.observe(bad=True, good=False, at=1.2, rule=rule) is None
    assert m.observe(bad=False, good=True, at=1.5, rule=rule) is None
    assert m.state is AlarmState.NORMAL
    for t in (10.0, 11.0, 12.0):
        assert m.observe(bad=True, good=False, at=t, rule=rule) is None
    assert m.observe(bad=True, good=False, at=13.0, rule=rule) is Transition.RAISED


def test_hysteresis_band_neither_raises_nor_clears() -> None:
    m = AlarmMachine()
    rule = Debounce(count=2)
    m.observe(bad=True, good=False, at=0, rule=rule)
    assert m.observe(bad=True, good=False, at=1, rule=rule) is Transition.RAISED
    # between the clear margin and the threshold: stays active
    assert m.observe(bad=False, good=False, at=2, rule=rule) is None
    assert m.active
    m.observe(bad=False, good=True, at=3, rule=rule)
    assert m.state is AlarmState.CLEARING
    m.observe(bad=True, good=False, at=4, rule=rule)  # back up: still active, not raised twice
    assert m.state is AlarmState.ACTIVE
    m.observe(bad=False, good=True, at=5, rule=rule)
    assert m.observe(bad=False, good=True, at=6, rule=rule) is Transition.CLEARED


def test_force_is_idempotent() -> None:
    m = AlarmMachine()
    assert m.force(active=True, at=0) is Transition.RAISED
    assert m.force(active=True, at=1) is None
    assert m.force(active=False, at=2) is Transition.CLEARED
    assert m.force(active=False, at=3) is None
    assert AlarmMachine.from_json(m.to_json()) == m


def test_seq_duplicates_gaps_wrap_and_boot() -> None:
    t = SeqTracker(window_s=600)
    assert t.observe(1, 65534, 0).lost == 0
    assert t.observe(1, 65535, 1).lost == 0
    assert t.observe(1, 2, 2).lost == 2  # 0 and 1 lost across the wrap
    assert t.observe(1, 2, 3).duplicate
    assert not t.observe(1, 2, 700).duplicate  # outside the 10 minute window
    assert t.observe(1, 0, 701, boot=True).lost == 0
    assert t.observe(1, 1, 702).lost == 0
    assert t.observe(2, 1, 702).lost == 0  # nodes are independent


REGISTRY = (
    "cover_id,owner_unit,cover_kind,node_id,maintenance,tilt_deg\n"
    "C-1,gas,valve,00000001,yes,\n"
    "C-2,power,vault,00000002,,5\n"
)


class Rig:
    def __init__(self, **thresholds: Any) -> None:
        registry, errors = parse_registry(REGISTRY)
        assert not errors
        ids = count()
        self.engine = EdgeEngine(
            gateway_id="gw",
            registry=registry,
            thresholds=Thresholds().merged(thresholds),
            kind_thresholds={"valve": {"gas_CH4": 20.0}},
            slaves={},
            started_at=0.0,
            new_id=lambda: f"id{next(ids)}",
        )
        self.seq: dict[int, int] = {}

    def frame(
        self,
        node: int,
        records: list[Record],
        *,
        at: float,
        msg_type: MessageType = MessageType.REPORT,
        flags: FrameFlags = FrameFlags.NONE,
    ) -> list[dict[str, Any]]:
        seq = self.seq.get(node, 0)
        self.seq[node] = seq + 1
        frame = Frame(node, seq, msg_type, flags, tuple(records))
        out = self.engine.handle(FrameHeard("lora0", at, Received(frame, b"")))
        return alarms(out)


def alarms(out: list[Outgoing]) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in out if m.lane is Lane.ALARM]


def test_tilt_against_baseline_and_per_cover_threshold() -> None:
    rig = Rig()
    assert rig.frame(2, [Tilt(3.0, 0.0)], at=0) == []  # baseline recorded: 3 degrees installed
    assert rig.frame(2, [Tilt(7.0, 0.0)], at=1) == []  # 4 degrees against it, threshold 5 for C-2
    raised = rig.frame(2, [Tilt(9.0, 0.0)], at=2) + rig.frame(2, [Tilt(9.0, 0.0)], at=3)
    assert [(a["kind"], a["state"], a["value"], a["threshold"]) for a in raised] == [
        ("tilt", "raised", 6.0, 5.0)
    ]
    rig.engine.rezero("C-2")
    assert rig.frame(2, [Tilt(9.0, 0.0)], at=4) == []  # new baseline: flat again


def test_gas_per_kind_threshold_oxygen_low_side_and_maintenance_flag() -> None:
    rig = Rig(report_count=1)
    assert rig.frame(1, [Gas(GasKind.CH4, 15.0)], at=0) == []  # valve covers alarm at 20 %LEL
    (ch4,) = rig.frame(1, [Gas(GasKind.CH4, 25.0)], at=1)
    assert (ch4["kind"], ch4["sub"], ch4["maintenance"]) == ("gas", "CH4", True)
    (o2,) = rig.frame(1, [Gas(GasKind.O2, 18.0)], at=2)
    assert (o2["sub"], o2["state"], o2["unit"]) == ("O2", "raised", "%vol")


def test_low_battery_by_flag_or_voltage_and_clear() -> None:
    rig = Rig(report_count=1)
    (raised,) = rig.frame(2, [Battery(3500)], at=0, flags=FrameFlags.LOW_BATTERY)
    assert raised["kind"] == "low_battery"
    assert rig.frame(2, [Battery(3350)], at=1) == []  # between 3300 and 3400: no clear
    (cleared,) = rig.frame(2, [Battery(3450)], at=2)
    assert cleared["state"] == "cleared"
    assert cleared["alarm_id"] == raised["alarm_id"]


def test_node_events_tamper_and_fault_cleared_by_a_normal_report() -> None:
    rig = Rig()
    got = rig.frame(
        2,
        [Event(EventCode.IMPACT_TAMPER, 5, 0), Event(EventCode.SENSOR_FAULT, 0, 0)],
        at=100,
        msg_type=MessageType.EVENT,
        flags=FrameFlags.NODE_ALARM,
    )
    assert [(a["kind"], a["sub"], a["time"][-13:]) for a in got] == [
        ("tamper", None, "00:01:35.000Z"),  # receive time minus the event's age
        ("sensor_fault", "node", "00:01:40.000Z"),
    ]
    assert rig.frame(2, [Tilt(0.0, 0.0)], at=101, flags=FrameFlags.NODE_ALARM) == []
    cleared = rig.frame(2, [Tilt(0.0, 0.0)], at=102)
    assert [(a["kind"], a["state"]) for a in cleared] == [
        ("tamper", "cleared"),
        ("sensor_fault", "cleared"),
    ]


def test_offline_after_timeout_and_back() -> None:
    rig = Rig(offline_after_s=60)
    rig.frame(1, [Battery(3600)], at=0)
    rig.frame(2, [Battery(3600)], at=50)
    assert alarms(rig.engine.tick(59)) == []
    (offline,) = alarms(rig.engine.tick(61))
    assert (offline["cover"]["cover_id"], offline["kind"]) == ("C-1", "node_offline")
    assert alarms(rig.engine.tick(62)) == []  # raised once
    (back,) = rig.frame(1, [Battery(3600)], at=70)
    assert (back["kind"], back["state"]) == ("node_offline", "cleared")


def test_slave_fault_after_n_failures() -> None:
    rig = Rig(fault_after_failures=3)
    outs = [rig.engine.handle(SlaveFailed("bus", 5, float(i), "no reply", i)) for i in (1, 2, 3, 4)]
    assert [len(alarms(o)) for o in outs] == [0, 0, 1, 0]
    (fault,) = alarms(outs[2])
    assert (fault["registered"], fault["sub"], fault["reason"]) == (False, "bus:5", "no reply")


def test_duplicates_dropped_unregistered_counted() -> None:
    rig = Rig()
    frame = Frame(0x99, 7, MessageType.REPORT, FrameFlags.NONE, (Battery(3600),))
    first = rig.engine.handle(FrameHeard("lora0", 0, Received(frame, b"")))
    again = rig.engine.handle(FrameHeard("lora1", 1, Received(frame, b"")))
    assert len(first) == 1
    assert again == []
    assert rig.engine.stats.duplicates == 1
    assert rig.engine.stats.unregistered_frames == 1
    reading = json.loads(unpack_row(first[0].payload))
    assert "cover_id" not in reading
    assert reading["source"]["node"] == "00000099"


@pytest.mark.parametrize("report_count", [1, 2, 3])
def test_snapshot_restores_pending_and_active(report_count: int) -> None:
    rig = Rig(report_count=report_count)
    for i in range(report_count):
        rig.frame(2, [Tilt(0.0, 0.0)] if i == 0 else [Tilt(30.0, 0.0)], at=i)
    saved = json.loads(json.dumps(rig.engine.snapshot()))
    again = Rig(report_count=report_count)
    again.engine.restore(saved)
    assert again.engine.active_alarms() == rig.engine.active_alarms()


def test_the_opening_event_itself_raises_no_tilt_alarm() -> None:
    """The first EVENT creates the cover_open alarm; its own tilt reading must not count as tilt."""
    rig = Rig(report_count=1)
    rig.frame(1, [Tilt(0.0, 0.0)], at=0)
    got = rig.frame(
        1,
        [Event(EventCode.COVER_OPENED, 0, 4500), Tilt(45.0, 0.0)],
        at=1,
        msg_type=MessageType.EVENT,
        flags=FrameFlags.NODE_ALARM,
    )
    assert [a["kind"] for a in got] == ["cover_open"]
