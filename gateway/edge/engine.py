"""The edge engine: inputs in, messages for the platform out.

Every frame or reading becomes telemetry; alarm machines decide what becomes
an alarm. The engine does no I/O: the pipeline stores what it returns (and
``snapshot()`` when ``dirty``) in one commit, so an alarm and the state that
raised it are never out of step, across crashes included.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from gateway.buffer.queue import Lane, Outgoing
from gateway.config import LEVEL_UNITS_MM, SlaveConfig, SlaveRole, Thresholds
from gateway.edge.alarm import SEVERITY, AlarmKind, AlarmMachine, Debounce, Transition
from gateway.edge.seqtrack import SeqTracker
from gateway.events import FrameHeard, Input, SlaveFailed, SlaveRead
from gateway.protocol.messages import (
    Battery,
    Event,
    EventCode,
    Frame,
    FrameFlags,
    Gas,
    GasKind,
    MessageType,
    Tilt,
    WaterDepth,
)
from gateway.protocol.render import flags_to_dict, record_to_dict
from gateway.registry import Cover, Registry

log = logging.getLogger(__name__)

SLAVE_TELEMETRY_INTERVAL_S = 60.0
RECENT_FRAMES = 50
RECENT_NODES = 10_000


def iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@dataclass
class EdgeStats:
    duplicates: int = 0
    lost_frames: int = 0
    unregistered_frames: int = 0
    lost_by_node: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class Subject:
    """Who an alarm is about: a registered cover, or a node/slave not in the registry."""

    key: str
    cover: Cover | None
    source: dict[str, Any]


class EdgeEngine:
    def __init__(
        self,
        *,
        gateway_id: str,
        registry: Registry,
        thresholds: Thresholds,
        kind_thresholds: dict[str, dict[str, Any]],
        slaves: dict[tuple[str, int], SlaveConfig],
        started_at: float,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.gateway_id = gateway_id
        self.topic_root = f"covers/{gateway_id}"
        self.slaves = slaves
        self.stats = EdgeStats()
        self.dirty = False
        self._new_id = new_id
        self._seq = SeqTracker()
        self._machines: dict[str, AlarmMachine] = {}
        self._baselines: dict[str, tuple[float, float]] = {}
        self._last_seen: dict[int, float] = {}
        self._slave_telemetry_at: dict[tuple[str, int], float] = {}
        self._started_at = started_at
        self._base_thresholds = thresholds
        self._kind_thresholds = kind_thresholds
        self.registry = registry
        self._thresholds: dict[str, Thresholds] = {}
        # Set by the platform's commands; kept with the alarm state across restarts.
        self.kind_overrides: dict[str, dict[str, Any]] = {}
        self.cover_overrides: dict[str, dict[str, Any]] = {}
        self.maintenance_until: dict[str, float] = {}
        self._recent: OrderedDict[int, deque[dict[str, Any]]] = OrderedDict()

    # --- configuration that may change at run time (SIGHUP) ---

    def reconfigure(
        self,
        registry: Registry,
        thresholds: Thresholds,
        kind_thresholds: dict[str, dict[str, Any]],
        slaves: dict[tuple[str, int], SlaveConfig],
    ) -> None:
        self.registry = registry
        self._base_thresholds = thresholds
        self._kind_thresholds = kind_thresholds
        self.slaves = slaves
        self._thresholds.clear()

    def thresholds(self, cover: Cover | None) -> Thresholds:
        if cover is None:
            return self._base_thresholds
        cached = self._thresholds.get(cover.cover_id)
        if cached is None:
            cached = (
                self._base_thresholds.merged(self._kind_thresholds.get(cover.cover_kind, {}))
                .merged(self.kind_overrides.get(cover.cover_kind, {}))
                .merged(cover.overrides)
                .merged(self.cover_overrides.get(cover.cover_id, {}))
            )
            self._thresholds[cover.cover_id] = cached
        return cached

    def set_thresholds(
        self, *, cover_id: str | None, cover_kind: str | None, values: dict[str, Any]
    ) -> None:
        target = self.cover_overrides if cover_id else self.kind_overrides
        key = cover_id or cover_kind or ""
        target[key] = {**target.get(key, {}), **values}
        self._thresholds.clear()
        self.dirty = True

    def clear_thresholds(
        self, *, cover_id: str | None, cover_kind: str | None, keys: list[str] | None
    ) -> list[str]:
        """Remove overrides ``set_thresholds`` made (``keys`` None: all); returns those removed."""
        target = self.cover_overrides if cover_id else self.kind_overrides
        key = cover_id or cover_kind or ""
        current = target.get(key, {})
        removed = [k for k in current if keys is None or k in keys]
        rest = {k: v for k, v in current.items() if k not in removed}
        if rest:
            target[key] = rest
        else:
            target.pop(key, None)
        self._thresholds.clear()
        self.dirty = True
        return removed

    def set_maintenance(self, cover_id: str, until: float | None) -> None:
        """``until`` None ends it; a time in the past ends it too."""
        if until is None:
            self.maintenance_until.pop(cover_id, None)
        else:
            self.maintenance_until[cover_id] = until
        self.dirty = True

    def in_maintenance(self, cover: Cover | None, at: float) -> bool:
        if cover is None:
            return False
        return cover.maintenance or self.maintenance_until.get(cover.cover_id, 0.0) > at

    # --- inputs ---

    def handle(self, event: Input) -> list[Outgoing]:
        if isinstance(event, FrameHeard):
            return self._frame(event)
        if isinstance(event, SlaveRead):
            return self._slave_read(event)
        if isinstance(event, SlaveFailed):
            return self._slave_failed(event)
        return []  # Observation: taken by the device-neutral engine (issue 9)

    def tick(self, now: float) -> list[Outgoing]:
        """Time passing: nodes not heard from within their offline timeout."""
        out: list[Outgoing] = []
        watched = set(self._last_seen) | set(self.registry.by_node)
        for node_id in watched:
            cover = self.registry.by_node.get(node_id)
            last = self._last_seen.get(node_id, self._started_at)
            silent_s = now - last
            limit = self.thresholds(cover).offline_after_s
            if silent_s > limit:
                subject = self._node_subject(node_id, cover, None)
                machine = self._machine(subject, AlarmKind.NODE_OFFLINE)
                transition = machine.force(active=True, at=now)
                if transition:
                    out.append(
                        self._alarm(
                            subject,
                            AlarmKind.NODE_OFFLINE,
                            "",
                            machine,
                            transition,
                            now,
                            value=round(silent_s, 1),
                            unit="s",
                            threshold=limit,
                            extra={"last_seen": iso(last) if node_id in self._last_seen else None},
                        )
                    )
        return out

    # --- radio frames ---

    def _node_subject(self, node_id: int, cover: Cover | None, event: FrameHeard | None) -> Subject:
        source: dict[str, Any] = {"type": "node", "node": f"{node_id:08X}"}
        if event is not None:
            source.update(port=event.source, seq=event.received.frame.seq)
        key = cover.cover_id if cover else f"node:{node_id:08X}"
        return Subject(key, cover, source)

    def _remember(self, event: FrameHeard) -> None:
        """The last frames heard from each node, duplicates included, for a technician."""
        node = event.received.frame.node_id
        recent = self._recent.pop(node, None) or deque(maxlen=RECENT_FRAMES)
        self._recent[node] = recent
        if len(self._recent) > RECENT_NODES:
            self._recent.popitem(last=False)
        frame, received = event.received.frame, event.received
        recent.append(
            {
                "time": iso(event.at),
                "port": event.source,
                "seq": frame.seq,
                "msg_type": frame.msg_type.name,
                "rx_rssi_dbm": received.rssi_dbm,
                "rx_snr_db": received.snr_db,
                "raw_hex": received.raw.hex(" ").upper(),
            }
        )

    def recent_frames(self, node_id: int, last: int) -> list[dict[str, Any]]:
        return list(self._recent.get(node_id, ()))[-last:]

    def _frame(self, event: FrameHeard) -> list[Outgoing]:
        frame = event.received.frame
        self._remember(event)
        verdict = self._seq.observe(
            frame.node_id, frame.seq, event.at, boot=frame.msg_type is MessageType.BOOT
        )
        if verdict.duplicate:
            self.stats.duplicates += 1
            return []
        if verdict.lost:
            self.stats.lost_frames += verdict.lost
            self.stats.lost_by_node[frame.node_hex] += verdict.lost
        cover = self.registry.by_node.get(frame.node_id)
        if cover is None:
            self.stats.unregistered_frames += 1
        subject = self._node_subject(frame.node_id, cover, event)
        self._last_seen[frame.node_id] = event.at
        out: list[Outgoing] = []
        offline = self._machines.get(self._key(subject, AlarmKind.NODE_OFFLINE, ""))
        if offline is not None and offline.active:
            transition = offline.force(active=False, at=event.at)
            if transition:
                out.append(
                    self._alarm(subject, AlarmKind.NODE_OFFLINE, "", offline, transition, event.at)
                )
        thr = self.thresholds(cover)
        derived: dict[str, Any] = {}
        tilt = frame.first(Tilt)
        rel_tilt = None
        cover_open = self._machine(subject, AlarmKind.COVER_OPEN)  # read again after events
        opened = cover_open.active
        if tilt is not None:
            # Only a normal report may become the baseline: never an opened cover's angle.
            normal = (
                frame.msg_type is MessageType.REPORT
                and FrameFlags.NODE_ALARM not in frame.flags
                and not opened
            )
            rel_tilt = self._relative_tilt(subject, tilt.x_deg, tilt.y_deg, may_record=normal)
            derived["tilt_deg"] = round(rel_tilt, 2)
        water = frame.first(WaterDepth)
        if water is not None:
            derived["water_distance_mm"] = water.distance_mm
        out.append(self._frame_telemetry(event, subject, derived))
        if frame.msg_type is MessageType.EVENT:
            out += self._node_events(subject, frame, event.at, thr)
        rule = Debounce(hold_s=0.0, count=thr.report_count)
        if frame.msg_type in (MessageType.REPORT, MessageType.EVENT):
            # An opened cover is tilted by definition: one alarm for one incident.
            opened = cover_open.active  # this frame's own EVENT may just have opened it
            if rel_tilt is not None and not opened:
                out += self._tilt(subject, rel_tilt, event.at, thr, rule)
            if water is not None:
                distance = math.inf if water.distance_mm is None else float(water.distance_mm)
                out += self._water(subject, distance, event.at, thr, rule)
            for gas in frame.all(Gas):
                out += self._gas(subject, gas, event.at, thr, rule)
        if frame.msg_type is MessageType.REPORT:
            out += self._report_clears(subject, frame, rel_tilt, event.at, thr)
        battery = frame.first(Battery)
        if battery is not None or FrameFlags.LOW_BATTERY in frame.flags:
            out += self._battery(subject, frame, battery, event.at, thr, rule)
        return out

    def _relative_tilt(self, subject: Subject, x: float, y: float, *, may_record: bool) -> float:
        """Tilt against the installed angle: the registry's, else the first normal reading's.

        Until a baseline exists, tilt is taken against level.
        """
        baseline = self._baselines.get(subject.key)
        if baseline is None and subject.cover is not None and subject.cover.baseline_deg:
            baseline = subject.cover.baseline_deg
        if baseline is None and may_record:
            baseline = (x, y)
            self._baselines[subject.key] = baseline
            self.dirty = True
            log.info("tilt baseline of %s recorded: %.2f, %.2f deg", subject.key, x, y)
        bx, by = baseline or (0.0, 0.0)
        return math.hypot(x - bx, y - by)

    def rezero(self, subject_key: str) -> None:
        """Forget a cover's tilt baseline; the next reading becomes the new one."""
        self._baselines.pop(subject_key, None)
        self.dirty = True

    def _node_events(
        self, subject: Subject, frame: Frame, at: float, thr: Thresholds
    ) -> list[Outgoing]:
        out: list[Outgoing] = []
        for event in frame.all(Event):
            event_at = at - event.age_s
            extra = {"event_time": iso(event_at), "node_event": event.code.name.lower()}
            match event.code:
                case EventCode.COVER_OPENED | EventCode.COVER_CLOSED:
                    kind, active, sub = (
                        AlarmKind.COVER_OPEN,
                        event.code is EventCode.COVER_OPENED,
                        "",
                    )
                case EventCode.TILT_ALARM:
                    kind, active, sub = AlarmKind.TILT, True, ""
                case EventCode.WATER_ALARM:
                    kind, active, sub = AlarmKind.WATER_HIGH, True, ""
                case EventCode.IMPACT_TAMPER:
                    kind, active, sub = AlarmKind.TAMPER, True, ""
                case EventCode.SENSOR_FAULT:
                    kind, active, sub = AlarmKind.SENSOR_FAULT, True, "node"
            machine = self._machine(subject, kind, sub)
            transition = machine.force(active=active, at=event_at)
            if transition:
                out.append(
                    self._alarm(
                        subject,
                        kind,
                        sub,
                        machine,
                        transition,
                        event_at,
                        value=event.value,
                        unit=event.value_unit,
                        extra=extra,
                    )
                )
        return out

    def _report_clears(
        self, subject: Subject, frame: Frame, rel_tilt: float | None, at: float, thr: Thresholds
    ) -> list[Outgoing]:
        """A normal REPORT (node not in alarm, cover lying flat) ends what the node raised."""
        if FrameFlags.NODE_ALARM in frame.flags:
            return []
        flat = rel_tilt is None or rel_tilt < thr.tilt_deg - thr.tilt_clear_margin_deg
        out: list[Outgoing] = []
        for kind, sub, needs_flat in (
            (AlarmKind.COVER_OPEN, "", True),
            (AlarmKind.TAMPER, "", False),
            (AlarmKind.SENSOR_FAULT, "node", False),
        ):
            machine = self._machines.get(self._key(subject, kind, sub))
            if machine is None or not machine.active or (needs_flat and not flat):
                continue
            transition = machine.force(active=False, at=at)
            if transition:
                value = None if rel_tilt is None else round(rel_tilt, 2)
                out.append(self._alarm(subject, kind, sub, machine, transition, at, value=value))
        return out

    # --- shared evaluations ---

    def _observe(
        self,
        subject: Subject,
        kind: AlarmKind,
        sub: str,
        *,
        bad: bool,
        good: bool,
        at: float,
        rule: Debounce,
        value: float | None,
        unit: str,
        threshold: float,
    ) -> list[Outgoing]:
        machine = self._machine(subject, kind, sub)
        before = machine.state
        transition = machine.observe(bad=bad, good=good, at=at, rule=rule)
        if machine.state is not before:
            self.dirty = True
        if transition is None:
            return []
        shown = None if value is None or math.isinf(value) else round(value, 2)
        return [
            self._alarm(
                subject,
                kind,
                sub,
                machine,
                transition,
                at,
                value=shown,
                unit=unit,
                threshold=threshold,
            )
        ]

    def _tilt(  # noqa: PLR0917 - private; arguments follow the alarm key's order
        self,
        subject: Subject,
        rel: float,
        at: float,
        thr: Thresholds,
        rule: Debounce,
        sub: str = "",
    ) -> list[Outgoing]:
        return self._observe(
            subject,
            AlarmKind.TILT,
            sub,
            bad=rel >= thr.tilt_deg,
            good=rel < thr.tilt_deg - thr.tilt_clear_margin_deg,
            at=at,
            rule=rule,
            value=rel,
            unit="deg",
            threshold=thr.tilt_deg,
        )

    def _water(  # noqa: PLR0917 - private; arguments follow the alarm key's order
        self,
        subject: Subject,
        distance: float,
        at: float,
        thr: Thresholds,
        rule: Debounce,
        sub: str = "",
    ) -> list[Outgoing]:
        out: list[Outgoing] = []
        for kind, limit in (
            (AlarmKind.WATER_HIGH, thr.water_high_mm),
            (AlarmKind.WATER_OVERFLOW, thr.water_overflow_mm),
        ):
            out += self._observe(
                subject,
                kind,
                sub,
                bad=distance <= limit,
                good=distance > limit + thr.water_clear_margin_mm,
                at=at,
                rule=rule,
                value=distance,
                unit="mm",
                threshold=limit,
            )
        return out

    def _gas(
        self, subject: Subject, gas: Gas, at: float, thr: Thresholds, rule: Debounce
    ) -> list[Outgoing]:
        name = gas.kind.name
        limit = thr.gas.get(name)
        if limit is None:
            return []
        margin = thr.gas_clear_margin.get(name, 0.0)
        low_side = gas.kind is GasKind.O2  # too little oxygen is the danger
        bad = gas.value <= limit if low_side else gas.value >= limit
        good = gas.value > limit + margin if low_side else gas.value < limit - margin
        return self._observe(
            subject,
            AlarmKind.GAS,
            name,
            bad=bad,
            good=good,
            at=at,
            rule=rule,
            value=gas.value,
            unit=gas.unit,
            threshold=limit,
        )

    def _battery(  # noqa: PLR0917 - private; arguments follow the alarm key's order
        self,
        subject: Subject,
        frame: Frame,
        battery: Battery | None,
        at: float,
        thr: Thresholds,
        rule: Debounce,
    ) -> list[Outgoing]:
        flagged = FrameFlags.LOW_BATTERY in frame.flags
        mv = None if battery is None else battery.voltage_mv
        bad = flagged or (mv is not None and mv < thr.low_battery_mv)
        good = not flagged and mv is not None and mv >= thr.low_battery_clear_mv
        return self._observe(
            subject,
            AlarmKind.LOW_BATTERY,
            "",
            bad=bad,
            good=good,
            at=at,
            rule=rule,
            value=None if mv is None else float(mv),
            unit="mV",
            threshold=thr.low_battery_mv,
        )

    # --- Modbus slaves ---

    def _slave_subject(self, bus: str, address: int) -> Subject:
        cover = self.registry.by_slave.get((bus, address))
        key = cover.cover_id if cover else f"modbus:{bus}:{address}"
        return Subject(key, cover, {"type": "modbus", "bus": bus, "slave": address})

    def _slave_read(self, event: SlaveRead) -> list[Outgoing]:
        subject = self._slave_subject(event.bus, event.address)
        slave = self.slaves.get((event.bus, event.address))
        thr = self.thresholds(subject.cover)
        out: list[Outgoing] = []
        fault = self._machines.get(
            self._key(subject, AlarmKind.SENSOR_FAULT, self._slave_sub(event))
        )
        if fault is not None and fault.active:
            transition = fault.force(active=False, at=event.at)
            if transition:
                out.append(
                    self._alarm(
                        subject,
                        AlarmKind.SENSOR_FAULT,
                        self._slave_sub(event),
                        fault,
                        transition,
                        event.at,
                    )
                )
        rule = Debounce(hold_s=thr.hold_s, count=1)
        derived: dict[str, Any] = {}
        if slave is not None and slave.role is SlaveRole.TILT:
            roll, pitch = event.values["roll_deg"], event.values["pitch_deg"]
            rel = self._relative_tilt(subject, roll, pitch, may_record=True)
            derived["tilt_deg"] = round(rel, 2)
            # A cover may carry a radio node and wired sensors: one alarm per sensor.
            out += self._tilt(subject, rel, event.at, thr, rule, sub=self._slave_sub(event))
        elif slave is not None and slave.role is SlaveRole.WATER_LEVEL:
            level_mm = event.values["level"] * LEVEL_UNITS_MM[slave.unit]
            derived["water_level_mm"] = round(level_mm, 1)
            depth = subject.cover.sensor_depth_mm if subject.cover else None
            if depth is not None:
                distance = depth - level_mm
                derived["water_distance_mm"] = round(distance, 1)
                out += self._water(
                    subject, distance, event.at, thr, rule, sub=self._slave_sub(event)
                )
        key = (event.bus, event.address)
        last = self._slave_telemetry_at.get(key)
        if out or last is None or event.at - last >= SLAVE_TELEMETRY_INTERVAL_S:
            self._slave_telemetry_at[key] = event.at
            out.insert(0, self._slave_telemetry(event, subject, derived))
        return out

    @staticmethod
    def _slave_sub(event: SlaveRead | SlaveFailed) -> str:
        return f"{event.bus}:{event.address}"

    def _slave_failed(self, event: SlaveFailed) -> list[Outgoing]:
        subject = self._slave_subject(event.bus, event.address)
        thr = self.thresholds(subject.cover)
        if event.consecutive < thr.fault_after_failures:
            return []
        sub = self._slave_sub(event)
        machine = self._machine(subject, AlarmKind.SENSOR_FAULT, sub)
        transition = machine.force(active=True, at=event.at)
        if transition is None:
            return []
        return [
            self._alarm(
                subject,
                AlarmKind.SENSOR_FAULT,
                sub,
                machine,
                transition,
                event.at,
                value=float(event.consecutive),
                unit="failures",
                threshold=float(thr.fault_after_failures),
                extra={"reason": event.reason},
            )
        ]

    # --- messages ---

    @staticmethod
    def _key(subject: Subject, kind: AlarmKind, sub: str) -> str:
        return f"{subject.key}|{kind.value}|{sub}"

    def _machine(self, subject: Subject, kind: AlarmKind, sub: str = "") -> AlarmMachine:
        key = self._key(subject, kind, sub)
        machine = self._machines.get(key)
        if machine is None:
            machine = self._machines[key] = AlarmMachine()
        return machine

    def _alarm(  # noqa: PLR0917 - private; arguments follow the alarm key's order
        self,
        subject: Subject,
        kind: AlarmKind,
        sub: str,
        machine: AlarmMachine,
        transition: Transition,
        at: float,
        *,
        value: float | None = None,
        unit: str | None = None,
        threshold: float | None = None,
        extra: dict[str, Any] | None = None,
    ) -> Outgoing:
        self.dirty = True
        if transition is Transition.RAISED or machine.alarm_id is None:
            machine.alarm_id = self._new_id()
        msg_id = self._new_id()
        cover = subject.cover
        payload: dict[str, Any] = {
            "msg_id": msg_id,
            "alarm_id": machine.alarm_id,
            "gateway": self.gateway_id,
            "kind": kind.value,
            "sub": sub or None,
            "state": transition.value,
            "severity": SEVERITY[kind],
            "time": iso(at),
            "raised_at": iso(machine.raised_at) if machine.raised_at is not None else None,
            "registered": cover is not None,
            "cover": cover.identity() if cover else None,
            "maintenance": self.in_maintenance(cover, at),
            "source": subject.source,
            "value": value,
            "unit": unit,
            "threshold": threshold,
        }
        if extra:
            payload.update(extra)
        log.info(
            "alarm %s %s %s%s value=%s",
            transition.value,
            kind.value,
            subject.key,
            f" ({sub})" if sub else "",
            value,
        )
        return Outgoing(msg_id, Lane.ALARM, f"{self.topic_root}/alarm", _dumps(payload))

    def _frame_telemetry(
        self, event: FrameHeard, subject: Subject, derived: dict[str, Any]
    ) -> Outgoing:
        frame = event.received.frame
        reading_id = self._new_id()
        reading = {
            "reading_id": reading_id,
            "time": iso(event.at),
            "registered": subject.cover is not None,
            "cover": subject.cover.identity() if subject.cover else None,
            "source": {
                "type": "node",
                "port": event.source,
                "node": frame.node_hex,
                "seq": frame.seq,
                "msg_type": frame.msg_type.name,
                "flags": flags_to_dict(frame.flags),
                "rx_rssi_dbm": event.received.rssi_dbm,
                "rx_snr_db": event.received.snr_db,
            },
            "records": [record_to_dict(r) for r in frame.records],
            "derived": derived,
        }
        return Outgoing(reading_id, Lane.TELEMETRY, f"{self.topic_root}/telemetry", _dumps(reading))

    def _slave_telemetry(
        self, event: SlaveRead, subject: Subject, derived: dict[str, Any]
    ) -> Outgoing:
        reading_id = self._new_id()
        reading = {
            "reading_id": reading_id,
            "time": iso(event.at),
            "registered": subject.cover is not None,
            "cover": subject.cover.identity() if subject.cover else None,
            "source": {"type": "modbus", "bus": event.bus, "slave": event.address},
            "values": {k: round(v, 4) for k, v in event.values.items()},
            "derived": derived,
        }
        return Outgoing(reading_id, Lane.TELEMETRY, f"{self.topic_root}/telemetry", _dumps(reading))

    # --- state that survives a restart ---

    def active_alarms(self) -> list[dict[str, Any]]:
        out = []
        for key, machine in self._machines.items():
            if machine.active:
                subject, kind, sub = key.split("|")
                out.append(
                    {
                        "subject": subject,
                        "kind": kind,
                        "sub": sub or None,
                        "alarm_id": machine.alarm_id,
                        "raised_at": iso(machine.raised_at) if machine.raised_at else None,
                    }
                )
        return out

    def snapshot(self) -> dict[str, Any]:
        self.dirty = False
        return {
            "machines": {
                k: m.to_json() for k, m in self._machines.items() if m.state.value != "normal"
            },
            "baselines": {k: list(v) for k, v in self._baselines.items()},
            "kind_overrides": self.kind_overrides,
            "cover_overrides": self.cover_overrides,
            "maintenance_until": self.maintenance_until,
        }

    def restore(self, data: dict[str, Any]) -> None:
        self._machines = {k: AlarmMachine.from_json(v) for k, v in data.get("machines", {}).items()}
        self._baselines = {
            k: (float(v[0]), float(v[1])) for k, v in data.get("baselines", {}).items()
        }
        self.kind_overrides = dict(data.get("kind_overrides", {}))
        self.cover_overrides = dict(data.get("cover_overrides", {}))
        self.maintenance_until = {k: float(v) for k, v in data.get("maintenance_until", {}).items()}
        self._thresholds.clear()
        log.info(
            "restored %d alarm states, %d tilt baselines", len(self._machines), len(self._baselines)
        )

    def frames_seen(self) -> Iterable[tuple[str, float]]:
        return ((f"{n:08X}", t) for n, t in self._last_seen.items())
