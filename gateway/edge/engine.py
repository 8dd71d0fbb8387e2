"""The edge engine: observations in, messages for the platform out.

Every input hands it an ``Observation`` (the older SCN-1 and Modbus forms are
adapted at the door, ``adapters``), except an SCN-1 REPORT or HEARTBEAT, nearly
every frame, which the routine path (``_routine_frame``) takes from the frame
itself through the same steps. ``admission`` decides what is taken
(input binding, true duplicates, rate) and tracks devices (``devices``); the
rules (``rules/``) say what the quantities mean; their verdicts move the
alarm machines (``machines``, ``alarm``); tilt needs each sensor's installed
orientation (``baselines``); thresholds and maintenance come through
``overrides``; ``render`` writes what the platform receives. The engine does
no I/O: the pipeline stores what it returns together with ``take_state()``
in one commit, so an alarm and the state that raised it are never out of
step, across crashes included.

Bounds of the per-key state (what happens at each is said beside it):

- devices not in the registry: ``[limits] unregistered_nodes`` (default 256);
  the least recently heard is forgotten with its alarms and baselines, and
  its state row deleted. Registered devices: one each.
- per device: ``seqtrack.MAX_RECENT`` (16) remembered (counter, fingerprint)
  pairs within ``DUPLICATE_WINDOW_S`` (600 s); older ones are forgotten.
- alarm machines and tilt baselines: per tracked subject, at most one per
  alarm kind and sensor (gas: one per gas kind with a threshold).
- overrides and maintenance: one per cover in the registry and per cover
  kind (the command layer refuses unknown covers).
- frame history for ``frames``: ``[limits] recent_frames_bytes`` (2 MiB) in
  all, oldest dropped first.
- offline deadlines: one heap entry per registered radio device.
- readings forwarded per device: ``[limits] device_frames_per_minute`` (60);
  above it readings are still judged by the rules (an alarm is never held
  back) but not forwarded, and counted as ``rate_limited``.
- devices named in ``lost_frames_by_node``: 1000; later ones are counted in
  ``lost_frames`` only.
- polled readings remembered for the quiet path (``_polled``): two per
  configured slave (the last one judged in full, the one before it);
  forgotten at a reload.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from gateway.buffer.queue import Lane, Outgoing
from gateway.config import LimitsConfig, SlaveConfig, Thresholds
from gateway.edge import adapters, state
from gateway.edge.admission import Admission, Admitted, EdgeStats
from gateway.edge.alarm import SEVERITY, AlarmKind, AlarmMachine, Debounce, Transition
from gateway.edge.baselines import Baselines
from gateway.edge.devices import (
    Deadlines,
    DeviceState,
    Token,
    device_key,
    from_token,
    parse_device_key,
)
from gateway.edge.machines import AlarmBook
from gateway.edge.overrides import Overrides
from gateway.edge.recent import Heard, RecentFrames
from gateway.edge.render import Subject, alarm_source, device_source, id_maker, iso
from gateway.edge.render import alarm as render_alarm
from gateway.edge.render import node_reading as render_node_reading
from gateway.edge.render import reading as render_reading
from gateway.edge.rules import (
    Check,
    Force,
    Verdict,
    battery,
    clears,
    events,
    fault,
    gas,
    offline,
    opening,
    tilt,
    water,
)
from gateway.edge.rules.battery import LOW_BATTERY_BITS
from gateway.edge.state import StateLog
from gateway.events import FrameHeard, Input, SlaveFailed, SlaveRead
from gateway.observation import DeviceRef, Observation, Purpose, Quantities
from gateway.protocol.messages import MessageType
from gateway.protocol.render import records_to_dicts
from gateway.registry import Cover, Registry
from gateway.values import maker

log = logging.getLogger(__name__)

__all__ = ["EdgeEngine", "EdgeStats", "iso"]

# One of each per frame: without ``type.__call__``.
_make_heard, _make_device, _make_subject = maker(Heard), maker(DeviceRef), maker(Subject)
POLLED_TELEMETRY_INTERVAL_S = 60.0  # a polled sensor's readings upstream, unless it alarms

# Enum members the per-frame path names, as module constants: on Python 3.11 an
# Enum class attribute costs ~0.1 µs a lookup (EnumType.__getattr__), a global ~0.03.
_NODE_OFFLINE, _SENSOR_FAULT, _COVER_OPEN = (
    AlarmKind.NODE_OFFLINE,
    AlarmKind.SENSOR_FAULT,
    AlarmKind.COVER_OPEN,
)
_REPORT, _STATUS = Purpose.REPORT, Purpose.STATUS
_REFUSED, _FORWARD = Admitted.REFUSED, Admitted.FORWARD
_TELEMETRY = Lane.TELEMETRY
_REPORT_FRAME, _HEARTBEAT_FRAME = MessageType.REPORT, MessageType.HEARTBEAT
_SCN1 = adapters.SCN1
_OFFLINE_HEARD = offline.heard("")  # a cover's own node heard: its offline alarm, if any, ends

# What an alarm names as its source: the observation it was raised on, or the
# frame itself on the routine path (which builds no observation).
Origin = Observation | FrameHeard


def _source(origin: Origin) -> dict[str, Any]:
    """An alarm's source block (rare: only when an alarm moves), as the observation gives it."""
    return alarm_source(origin if isinstance(origin, Observation) else adapters.from_frame(origin))


def alarm_sub(device: DeviceRef) -> str:
    """A cover's own SCN-1 node speaks for the cover; any other sensor is named by its id."""
    return "" if device.model == adapters.SCN1 else device.device_id


def fault_sub(device: DeviceRef) -> str:
    return "node" if device.model == adapters.SCN1 else device.device_id


def _unregistered_key(device: DeviceRef) -> str:
    match device.model:
        case adapters.SCN1:
            return f"node:{device.device_id}"
        case adapters.MODBUS:
            return f"modbus:{device.device_id}"
    return f"{device.model}:{device.device_id}"


def _seen(row: tuple[str, str]) -> float:
    """When a device row's device was last heard (0 for any other row or a damaged one)."""
    if not row[0].startswith(state.DEVICE):
        return 0.0
    try:
        return float(json.loads(row[1]).get("seen") or 0.0)
    except (ValueError, TypeError, AttributeError):
        return 0.0


@dataclass(frozen=True, slots=True)
class _Quiet:
    """A polled reading judged in full that changed nothing, and what it was judged with
    (besides the subject's alarm machines and the clock, which ``_polled`` asks anew).
    Dropped whenever device states may be replaced or telemetry times forgotten:
    ``reconfigure``, ``load_state``, ``restore``, ``_forget``."""

    values: dict[str, float]
    sent_at: float  # when the sensor's last reading went upstream
    slave: SlaveConfig | None
    cover: Cover | None
    thr: Thresholds
    baseline: tuple[float, ...] | None  # the sensor's tilt baseline after it
    key: str  # the subject's
    sub: str  # the sensor's, in its subject
    state: DeviceState  # admission's, replaced only by a reload or restored state


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
        new_id: Callable[[], str] | None = None,
        limits: LimitsConfig | None = None,
    ) -> None:
        self.gateway_id = gateway_id
        self.topic_root = f"covers/{gateway_id}"
        self._telemetry_topic = f"{self.topic_root}/telemetry"
        self.slaves = slaves
        self.limits = limits or LimitsConfig()
        self.stats = EdgeStats()
        self.registry = registry
        self._new_id = new_id or id_maker()
        self._started_at = started_at
        self._log = StateLog()
        self.overrides = Overrides(thresholds, kind_thresholds, self._log)
        self.admission = Admission(stats=self.stats, log=self._log, limits=self.limits)
        self.devices = self.admission.devices
        self._deadlines = Deadlines()
        self.alarms = AlarmBook(self._log)
        self.baselines = Baselines(self._log)
        self._polled_telemetry_at: dict[DeviceRef, float] = {}
        # (bus, address) → the last polled reading judged in full that changed nothing,
        # remembered when it repeated the one before (a sensor at rest); the one before.
        self._quiet: dict[tuple[str, int], _Quiet] = {}
        self._read_before: dict[tuple[str, int], dict[str, float]] = {}
        # Moves with anything that may change how a polled reading is judged: every
        # input but a quiet polled reading, every tick, command and reload (quiet_until).
        self.epoch = 0
        self._rules: dict[tuple[float, int], Debounce] = {}
        self._recent = RecentFrames(self.limits.recent_frames_bytes)
        self._watch_registered()

    # --- configuration that may change at run time (SIGHUP) ---

    def reconfigure(
        self,
        registry: Registry,
        thresholds: Thresholds,
        kind_thresholds: dict[str, dict[str, Any]],
        slaves: dict[tuple[str, int], SlaveConfig],
    ) -> None:
        self.epoch += 1
        self.registry = registry
        self.overrides.reconfigure(thresholds, kind_thresholds)
        self.slaves = slaves
        self._quiet.clear()  # slaves may be gone: judged afresh (each held its own anyway)
        self._read_before.clear()
        for device in self.devices.regroup(
            lambda d: registry.cover_for(d) is not None or d.model == adapters.MODBUS
        ):
            self._forget(device)
        self._watch_registered()

    def _watch_registered(self) -> None:
        """Every registered radio device gets a deadline (rebuilt when thresholds change)."""
        self._deadlines.clear()
        for device, cover in self.registry.radio_devices():
            known = self.devices.get(device)
            last = known.last_seen if known and known.last_seen is not None else self._started_at
            self._deadlines.watch(device, last + self.thresholds(cover).offline_after_s)

    def thresholds(self, cover: Cover | None) -> Thresholds:
        return self.overrides.thresholds(cover)

    @property
    def kind_overrides(self) -> dict[str, dict[str, Any]]:
        return self.overrides.kind

    @property
    def cover_overrides(self) -> dict[str, dict[str, Any]]:
        return self.overrides.cover

    @property
    def maintenance_until(self) -> dict[str, float]:
        return self.overrides.maintenance_until

    def set_thresholds(
        self, *, cover_id: str | None, cover_kind: str | None, values: dict[str, Any]
    ) -> None:
        self.epoch += 1
        self.overrides.set_thresholds(cover_id=cover_id, cover_kind=cover_kind, values=values)
        self._watch_registered()  # offline_after_s may have changed

    def clear_thresholds(
        self, *, cover_id: str | None, cover_kind: str | None, keys: list[str] | None
    ) -> list[str]:
        """Remove overrides ``set_thresholds`` made (``keys`` None: all); returns those removed."""
        self.epoch += 1
        removed = self.overrides.clear_thresholds(
            cover_id=cover_id, cover_kind=cover_kind, keys=keys
        )
        self._watch_registered()  # offline_after_s may have changed
        return removed

    def set_maintenance(self, cover_id: str, until: float | None) -> None:
        """``until`` None ends it; a time in the past ends it too."""
        self.epoch += 1
        self.overrides.set_maintenance(cover_id, until)

    def in_maintenance(self, cover: Cover | None, at: float) -> bool:
        return self.overrides.in_maintenance(cover, at)

    def rezero(self, subject_key: str) -> None:
        """Forget a cover's tilt baselines; each sensor's next normal reading is the new one."""
        self.epoch += 1
        self.baselines.rezero(subject_key)

    # --- inputs ---

    def handle(self, event: Input) -> list[Outgoing]:
        if isinstance(event, SlaveRead):
            return self._polled(event)
        match event:
            case FrameHeard():
                msg_type = event.received.frame.msg_type
                if msg_type is _REPORT_FRAME or msg_type is _HEARTBEAT_FRAME:
                    return self._routine_frame(event)
                return self.observe(adapters.from_frame(event))
            case SlaveFailed():
                return self.observe(adapters.from_slave_failed(event))
        return self.observe(event)

    def _subject(self, device: DeviceRef) -> Subject:
        cover = self.registry.cover_for(device)
        key = cover.cover_id if cover else _unregistered_key(device)
        return Subject(key, cover, device)

    def _rule(self, thr: Thresholds, *, polled: bool) -> Debounce:
        """The debounce for THR: made once per (hold, count), not per observation."""
        key = (thr.hold_s, 1) if polled else (0.0, thr.report_count)
        rule = self._rules.get(key)
        if rule is None:
            rule = self._rules[key] = Debounce(hold_s=key[0], count=key[1])
        return rule

    def observe(self, obs: Observation) -> list[Outgoing]:
        """One observation: tracked, judged, rendered."""
        self.epoch += 1
        return self._observed(obs, self._subject(obs.device))[0]

    def _observed(self, obs: Observation, subject: Subject) -> tuple[list[Outgoing], bool]:
        """``observe``, and whether the observation was admitted and judged."""
        failure = [e for e in obs.events if "failures" in e.detail] if obs.events else []
        if obs.raw:
            self._remember(obs)
        forward = True
        if not failure:
            accepted = self._track(obs, subject)
            if accepted is None:
                return [], False
            forward = accepted
        thr = self.thresholds(subject.cover)
        sub, fsub = alarm_sub(obs.device), fault_sub(obs.device)
        rule = self._rule(thr, polled=obs.polled)
        verdicts: list[Verdict] = []
        if failure:
            verdicts += filter(None, (fault.from_failures(e, thr, fsub) for e in failure))
        else:
            # Clears of what is not active are no-ops: skipped before they cost anything.
            if self.alarms.active(subject.key, _NODE_OFFLINE, sub):
                verdicts.append(offline.heard(sub))
            if obs.polled and self.alarms.active(subject.key, _SENSOR_FAULT, fsub):
                verdicts.append(fault.answered(fsub))
        if obs.events:
            verdicts += events.forces(obs.events, sub=sub, fault_sub=fsub, iso=iso)
        at, evidence = obs.at, obs.quantities.device_alarms
        out = self._apply(subject, verdicts, at, obs, evidence) if verdicts else []
        derived: dict[str, Any] = {}
        out += self._judge(
            subject,
            obs.quantities,
            obs.purpose,
            at,
            obs,
            thr=thr,
            rule=rule,
            derived=derived,
            sub=sub,
            fsub=fsub,
            polled=obs.polled,
            judges_opening=obs.judges_opening,
        )
        if forward and not failure and self._telemetry_due(obs, bool(out)):
            reading_id = self._new_id()
            payload = render_reading(obs, reading_id, subject, derived)
            out.insert(0, Outgoing(reading_id, _TELEMETRY, self._telemetry_topic, payload))
        return out, True

    def _polled(self, event: SlaveRead) -> list[Outgoing]:
        """A polled reading: ``observe(from_slave_read(...))``, or the quiet path.

        A wired sensor at rest reads the same every second. A reading equal to
        the sensor's last one judged in full (remembered when it repeated the one
        before it: one on the move costs one comparison), when that judgement changed
        nothing (the subject had no alarm machine away from normal before or
        after it, and no alarm moved), is not judged again while nothing it was
        judged with has changed: the same slave and cover configuration, the
        same thresholds and tilt baseline, still no machine away from normal
        (so no debounce or hold window runs), and no telemetry due. Judged
        again it would say nothing and change nothing; it is admitted (the
        sensor was heard) and that is all. A property test holds this path to
        the general one's messages and state for arbitrary sequences.
        """
        where = (event.bus, event.address)
        quiet = self._quiet.get(where)
        if (
            quiet is not None
            and quiet.values == event.values
            and event.at - quiet.sent_at < POLLED_TELEMETRY_INTERVAL_S
            and self._still_quiet(quiet, where)
        ):
            self.admission.heard_again(quiet.state, quiet.cover, at=event.at)
            return []
        self.epoch += 1
        slave = self.slaves.get(where)
        obs = adapters.from_slave_read(event, slave)
        subject = self._subject(obs.device)
        calm = not self.alarms.any_kept(subject.key)
        out, judged = self._observed(obs, subject)
        before, self._read_before[where] = self._read_before.get(where), event.values
        if before != event.values:  # a sensor on the move: not worth remembering
            self._quiet.pop(where, None)
            return out
        state = self.devices.get(obs.device)
        sent_at = self._polled_telemetry_at.get(obs.device)
        if (
            calm
            and judged
            and not self.alarms.any_kept(subject.key)
            and all(m.lane is _TELEMETRY for m in out)
            and state is not None
            and sent_at is not None
        ):
            sub = alarm_sub(obs.device)
            self._quiet[where] = _Quiet(
                event.values,
                sent_at,
                slave,
                subject.cover,
                self.thresholds(subject.cover),
                self.baselines.kept(subject.key, sub),
                subject.key,
                sub,
                state,
            )
        else:
            self._quiet.pop(where, None)
        return out

    def _still_quiet(self, quiet: _Quiet, where: tuple[str, int]) -> bool:
        """Is everything QUIET was judged with, besides the values and the clock, as it was?"""
        return (
            quiet.slave is self.slaves.get(where)
            and quiet.cover is self.registry.by_slave.get(where)  # ``cover_for`` of the slave
            and quiet.thr is self.thresholds(quiet.cover)
            and not self.alarms.any_kept(quiet.key)
            and quiet.baseline is self.baselines.kept(quiet.key, quiet.sub)
        )

    def quiet_until(self, where: tuple[str, int], values: dict[str, float]) -> float | None:
        """Until when a reading of VALUES from slave WHERE takes the quiet path, as things
        stand now; None if it would be judged. ``epoch`` moves whenever they may change:
        a bus may keep such readings from the engine while it has not (gateway/daemon.py)."""
        quiet = self._quiet.get(where)
        if quiet is None or quiet.values != values or not self._still_quiet(quiet, where):
            return None
        return quiet.sent_at + POLLED_TELEMETRY_INTERVAL_S

    def _routine_frame(self, event: FrameHeard) -> list[Outgoing]:
        """An SCN-1 REPORT or HEARTBEAT: ``observe(from_frame(event))``, without the observation.

        Nearly every frame is one, and the general path would build an
        ``Observation`` (a dozen values and dicts) only to take it apart again.
        This path takes what each step needs from the frame itself and shares
        every step's logic (admission, rules, alarms, rendering) with
        ``observe``; frames with events (EVENT, BOOT) go the general way. A
        property test holds the two paths to the same messages and state rows.
        """
        self.epoch += 1
        received = event.received
        frame = received.frame
        node_id, at, port = frame.node_id, event.at, event.source
        node_hex = f"{node_id:08X}"
        cover = self.registry.by_node.get(node_id)  # ``cover_for`` of the node's ref
        device = _make_device(_SCN1, node_hex)
        subject = _make_subject(cover.cover_id if cover else "node:" + node_hex, cover, device)
        msg_type = adapters.TYPE_NAMES[frame.msg_type]
        self._recent.add(
            _make_heard(
                "scn1:" + node_hex,
                at,
                port,
                frame.seq,
                msg_type,
                received.rssi_dbm,
                received.snr_db,
                received.raw,
            )
        )
        verdict, forgotten = self.admission.admit_node(
            node_id,
            device,
            cover,
            source=port,
            at=at,
            seq=frame.seq,
            fingerprint=adapters.fingerprint(received.raw),
        )
        for gone in forgotten:
            self._forget(gone)
        if verdict is _REFUSED:
            return []
        thr = self.thresholds(cover)
        if cover is not None:
            self._deadlines.watch(node_id, at + thr.offline_after_s)
        q = adapters.frame_quantities(frame)
        out = (
            self._apply(subject, (_OFFLINE_HEARD,), at, event, q.device_alarms)
            if self.alarms.active(subject.key, _NODE_OFFLINE, "")
            else []
        )
        derived: dict[str, Any] = {}
        out += self._judge(
            subject,
            q,
            _REPORT if frame.msg_type is _REPORT_FRAME else _STATUS,
            at,
            event,
            thr=thr,
            rule=self._rule(thr, polled=False),
            derived=derived,
            sub="",
            fsub="node",
            polled=False,
            judges_opening=True,
        )
        if verdict is _FORWARD:
            reading_id = self._new_id()
            payload = render_node_reading(
                reading_id,
                at,
                subject,
                source=adapters.lean_node_source(event, node_hex),
                records=records_to_dicts(frame.records),
                derived=derived,
            )
            out.insert(0, Outgoing(reading_id, _TELEMETRY, self._telemetry_topic, payload))
        return out

    def _judge(
        self,
        subject: Subject,
        q: Quantities,
        purpose: Purpose,
        at: float,
        origin: Origin,
        *,
        thr: Thresholds,
        rule: Debounce,
        derived: dict[str, Any],
        sub: str,
        fsub: str,
        polled: bool,
        judges_opening: bool,
    ) -> list[Outgoing]:
        """The quantities against the thresholds; fills ``derived`` for the reading.

        ``origin`` is what an alarm raised here names as its source (``_apply_one``).
        """
        judged = purpose is not _STATUS
        evidence = q.device_alarms
        in_alarm = not q.device_alarms <= LOW_BATTERY_BITS  # bits beyond low battery; no new set
        out: list[Outgoing] = []
        # Whether the subject has any machine away from normal (an active one is one):
        # nearly every subject has none, and then nothing needs asking about its alarms.
        kept = self.alarms.any_kept(subject.key)
        opened = kept and self._active(subject, _COVER_OPEN, "")
        rel_tilt = None
        now = tilt.orientation(q)
        if now is not None:
            # Only a normal report may become the baseline: never an opened cover's angle.
            normal = purpose is _REPORT and not in_alarm and not opened
            rel_tilt = self.baselines.relative_tilt(
                subject.key, sub, subject.cover, now, may_record=normal
            )
            derived["tilt_deg"] = round(rel_tilt, 2)
        distance = water.distance_mm(q, subject.cover.sensor_depth_mm if subject.cover else None)
        if q.water_level_mm is not None:
            derived["water_level_mm"] = round(q.water_level_mm, 1)
        if q.distance_mm is not None or q.distance_no_echo:
            derived["water_distance_mm"] = q.distance_mm
        elif distance is not None:
            derived["water_distance_mm"] = round(distance, 1)
        verdicts = []
        if judged:
            if not judges_opening:
                verdicts += opening.verdicts(
                    displaced=q.cover_displaced,
                    tilt=rel_tilt,
                    routine=purpose is _REPORT,
                    thr=thr,
                    rule=rule,
                )
            if verdicts:
                out += self._apply(subject, verdicts, at, origin, evidence)
                opened = self._active(subject, _COVER_OPEN, "")  # the verdicts may have moved it
                kept = self.alarms.any_kept(subject.key)
                verdicts = []
            # No machine away from normal: checks that are not bad would change nothing.
            # An opened cover is tilted by definition: one alarm for one incident.
            if rel_tilt is not None and not opened:
                tilted = tilt.check(rel_tilt, thr, rule, sub, quiet=not kept)
                if tilted is not None:
                    verdicts.append(tilted)
            if distance is not None:
                verdicts += water.checks(distance, thr, rule, sub, quiet=not kept)
            if q.gas:
                verdicts += gas.checks(q.gas, thr, rule)
        if (
            kept
            and purpose is _REPORT
            and not in_alarm
            and not polled
            and self.alarms.any_active(subject.key)
        ):
            verdicts += clears.after_normal_report(
                rel_tilt, thr, fault_sub=fsub, judges_opening=judges_opening
            )
        low = battery.check(q, thr, rule, sub, quiet=not kept)
        if low is not None:
            verdicts.append(low)
        if verdicts:
            out += self._apply(subject, verdicts, at, origin, evidence)
        return out

    def _telemetry_due(self, obs: Observation, alarmed: bool) -> bool:
        if not obs.polled:
            return True
        last = self._polled_telemetry_at.get(obs.device)
        if alarmed or last is None or obs.at - last >= POLLED_TELEMETRY_INTERVAL_S:
            self._polled_telemetry_at[obs.device] = obs.at
            return True
        return False

    def _track(self, obs: Observation, subject: Subject) -> bool | None:
        """Admission, then liveness: None refuses, False holds back telemetry."""
        verdict, forgotten = self.admission.admit(obs, subject.cover)
        for device in forgotten:
            self._forget(device)
        if verdict is not _REFUSED and not obs.polled and subject.cover is not None:
            self._deadlines.watch(
                obs.device, obs.at + self.thresholds(subject.cover).offline_after_s
            )
        return None if verdict is _REFUSED else verdict is _FORWARD

    def _forget(self, gone: Token) -> None:
        """An unregistered device pushed out: its state and alarms go with it."""
        if self._quiet and not isinstance(gone, int) and gone.model == adapters.MODBUS:
            self._quiet.clear()  # a wired sensor's state gone (a reload): judged in full
        if isinstance(gone, int):
            # An SCN-1 node by number (nearly every one: strangers churn through the
            # LRU), named as ``device_key`` and ``_unregistered_key`` name its ref.
            node_hex = f"{gone:08X}"
            self._log.delete(f"{state.DEVICE}{_SCN1}:{node_hex}", urgent=False)
            if gone in self.registry.by_node:
                return
            key = "node:" + node_hex
        else:
            self._log.delete(state.DEVICE + device_key(gone), urgent=False)
            if self.registry.cover_for(gone) is not None:
                return
            key = _unregistered_key(gone)
        # Not urgent: the rows go with the next commit.
        self.alarms.forget(key)
        self.baselines.rezero(key, urgent=False)
        if self._polled_telemetry_at:
            self._polled_telemetry_at.pop(from_token(gone), None)

    def _remember(self, obs: Observation) -> None:
        """The last frames heard, duplicates included, for a technician."""
        source = obs.extra.get("source")
        msg_type = source.get("msg_type") if isinstance(source, dict) else None
        self._recent.add(
            _make_heard(
                device=device_key(obs.device),
                at=obs.at,
                port=obs.source,
                counter=obs.counter,
                msg_type=str(msg_type or obs.purpose.name),
                rssi_dbm=obs.link.rssi_dbm,
                snr_db=obs.link.snr_db,
                raw=obs.raw,
            )
        )

    def recent_frames(self, node_id: int, last: int) -> list[dict[str, Any]]:
        return self._recent.last(device_key(adapters.scn1_device(node_id)), last, iso)

    # --- time passing ---

    def next_deadline(self) -> float | None:
        """When ``tick`` may next have something to do (clock time), None if never."""
        return self._deadlines.next_due()

    def tick(self, now: float) -> list[Outgoing]:
        """Registered devices not heard from within their offline timeout (what fell due only)."""
        out: list[Outgoing] = []
        for device in self._deadlines.due(now):
            self.epoch += 1
            subject = self._subject(device)
            if subject.cover is None:
                continue  # left the registry
            known = self.devices.get(device)
            heard = known is not None and known.last_seen is not None
            last = (
                known.last_seen
                if known is not None and known.last_seen is not None
                else self._started_at
            )
            limit = self.thresholds(subject.cover).offline_after_s
            if now - last <= limit:
                self._deadlines.watch(device, last + limit)  # heard since: the next deadline
                continue
            verdict = offline.raised(
                now - last,
                self.thresholds(subject.cover),
                alarm_sub(device),
                iso(last) if heard else None,
            )
            out += self._apply_one(subject, verdict, now, device)
        return out

    # --- alarm machines ---

    def _active(self, subject: Subject, kind: AlarmKind, sub: str) -> bool:
        return self.alarms.active(subject.key, kind, sub)

    def _apply(
        self,
        subject: Subject,
        verdicts: Iterable[Verdict],
        at: float,
        origin: Origin,
        evidence: frozenset[str],
    ) -> list[Outgoing]:
        out: list[Outgoing] = []
        alarms = self.alarms
        for verdict in verdicts:
            if (
                type(verdict) is Check
                and not verdict.bad
                and not alarms.has(subject.key, verdict.kind, verdict.sub)
            ):
                continue  # as in _apply_one, without the call: most checks of most readings
            out += self._apply_one(subject, verdict, at, origin, evidence=evidence)
        return out

    def _apply_one(
        self,
        subject: Subject,
        verdict: Verdict,
        at: float,
        origin: Origin | DeviceRef,
        evidence: frozenset[str] = frozenset(),
    ) -> list[Outgoing]:
        if (
            isinstance(verdict, Force)
            and verdict.only_if_active
            and not self.alarms.active(subject.key, verdict.kind, verdict.sub)
        ):
            return []
        if (
            isinstance(verdict, Check)
            and not verdict.bad
            and self.alarms.get(subject.key, verdict.kind, verdict.sub) is None
        ):
            # A normal reading for a machine in its normal state (only those away from
            # it are kept): it stays normal. Most checks of most readings end here.
            return []
        machine = self.alarms.machine(subject.key, verdict.kind, verdict.sub)
        before = machine.fingerprint()
        if isinstance(verdict, Check):
            transition = machine.observe(
                bad=verdict.bad, good=verdict.good, at=at, rule=verdict.rule
            )
            value = None if verdict.value is None else round(verdict.value, 2)
            unit: str | None = verdict.unit
            threshold: float | None = verdict.threshold
            when = at
        else:
            when = verdict.at if verdict.at is not None else at
            transition = machine.force(active=verdict.active, at=when)
            value, unit, threshold = verdict.value, verdict.unit, verdict.threshold
        out: list[Outgoing] = []
        if transition is not None:
            extra = dict(verdict.extra)
            if transition is Transition.RAISED or machine.alarm_id is None:
                machine.alarm_id = self._new_id()
            if (
                evidence - LOW_BATTERY_BITS
                and verdict.kind is not AlarmKind.NODE_OFFLINE
                and subject.device.model != adapters.SCN1
            ):
                extra["evidence"] = {**extra.get("evidence", {}), "device_alarms": sorted(evidence)}
            out.append(
                self._alarm(
                    subject,
                    verdict.kind,
                    verdict.sub,
                    machine,
                    transition,
                    when,
                    device_source(origin) if isinstance(origin, DeviceRef) else _source(origin),
                    value,
                    unit,
                    threshold,
                    extra,
                )
            )
        changed = machine.fingerprint() != before
        self.alarms.settle(subject.key, verdict.kind, verdict.sub, machine, changed=changed)
        return out

    def _alarm(  # noqa: PLR0917 - private; arguments follow the alarm message's order
        self,
        subject: Subject,
        kind: AlarmKind,
        sub: str,
        machine: AlarmMachine,
        transition: Transition,
        at: float,
        source: dict[str, Any],
        value: float | None,
        unit: str | None,
        threshold: float | None,
        extra: dict[str, Any],
    ) -> Outgoing:
        msg_id = self._new_id()
        payload = render_alarm(
            msg_id=msg_id,
            alarm_id=machine.alarm_id or msg_id,
            gateway=self.gateway_id,
            kind=kind.value,
            severity=SEVERITY[kind],
            sub=sub,
            state=transition.value,
            at=at,
            raised_at=machine.raised_at,
            subject=subject,
            maintenance=self.in_maintenance(subject.cover, at),
            source=source,
            value=value,
            unit=unit,
            threshold=threshold,
            extra=extra,
        )
        log.info(
            "alarm %s %s %s%s value=%s",
            transition.value,
            kind.value,
            subject.key,
            f" ({sub})" if sub else "",
            value,
        )
        return Outgoing(msg_id, Lane.ALARM, f"{self.topic_root}/alarm", payload)

    # --- what people and the platform are told ---

    def active_alarms(self) -> list[dict[str, Any]]:
        return [
            {
                "subject": subject_key,
                "kind": kind.value,
                "sub": sub or None,
                "alarm_id": machine.alarm_id,
                "raised_at": iso(machine.raised_at) if machine.raised_at else None,
            }
            for subject_key, kind, sub, machine in self.alarms.active_items()
        ]

    @property
    def active_count(self) -> int:
        return len(self.alarms)

    def frames_seen(self) -> Iterable[tuple[str, float]]:
        return (
            (d.device_id, s.last_seen)
            for d, s in self.devices.items()
            if s.last_seen is not None and d.model == adapters.SCN1
        )

    # --- state that survives a restart ---

    @property
    def dirty(self) -> bool:
        """State that should be committed now, messages or not (alarms, overrides, re-zeroing)."""
        return self._log.urgent

    def take_state(self) -> dict[str, str | None]:
        """The state rows changed since the last call: write them with the messages."""
        return self._log.take()

    def load_state(self, rows: Iterable[tuple[str, str]]) -> None:
        """Rows as written by ``take_state`` (``DurableQueue.state_items(state.PREFIX)``)."""
        self.epoch += 1
        self._quiet.clear()
        counts: Counter[str] = Counter()
        # Devices last, least recently heard first, so the LRU keeps its order.
        rows = sorted(rows, key=lambda r: (r[0].startswith(state.DEVICE), _seen(r)))
        for key, text in rows:
            try:
                counts[self._load_row(key, json.loads(text))] += 1
            except (ValueError, KeyError, TypeError, IndexError) as err:
                # One damaged row costs that row, never the start.
                log.error("state row %s unreadable, left out: %s", key, err)  # noqa: TRY400
                self._log.delete(key)
        machines, baselines, devices = counts["machine"], counts["baseline"], counts["device"]
        self._watch_registered()
        log.info(
            "restored %d alarm states, %d tilt baselines, %d devices", machines, baselines, devices
        )

    def _load_row(self, key: str, value: Any) -> str:
        if key.startswith(state.MACHINE):
            self.alarms.load(key.removeprefix(state.MACHINE), value)
            return "machine"
        if key.startswith(state.BASELINE):
            self.baselines.load(key.removeprefix(state.BASELINE), value)
            return "baseline"
        if key.startswith(state.DEVICE):
            device = parse_device_key(key.removeprefix(state.DEVICE))
            registered = self.registry.cover_for(device) is not None
            for gone in self.devices.load(
                device, DeviceState.from_json(value), registered=registered
            ):
                self._forget(gone)
            return "device"
        self.overrides.load(key, value)
        return "override"

    def restore(self, data: dict[str, Any]) -> None:
        """The whole-state blob of earlier versions: read once, then written as rows."""
        self.epoch += 1
        self._quiet.clear()
        for key, value in data.get("machines", {}).items():
            subject_key, kind, sub = key.rsplit("|", 2)  # unescaped in the old blob
            self.alarms.load(state.join(subject_key, kind, sub), value, save=True)
        for key, value in data.get("baselines", {}).items():
            self.baselines.load(state.join(key, ""), value, save=True)
        for key, values in data.get("kind_overrides", {}).items():
            self.overrides.kind[key] = dict(values)
        for key, values in data.get("cover_overrides", {}).items():
            self.overrides.cover[key] = dict(values)
        for key, until in data.get("maintenance_until", {}).items():
            self.overrides.maintenance_until[key] = float(until)
        self.overrides.save_all()
        self.overrides.reconfigure(self.overrides.base, self.overrides.kind_thresholds)
        self._watch_registered()
        log.info("migrated the engine's state blob: %d alarm states", len(data.get("machines", {})))

    def snapshot(self) -> dict[str, Any]:
        """Every state row as it would be written now (tests, and moving state between engines)."""
        return {
            "machines": self.alarms.snapshot(),
            "baselines": self.baselines.snapshot(),
            "kind_overrides": self.overrides.kind,
            "cover_overrides": self.overrides.cover,
            "maintenance_until": self.overrides.maintenance_until,
        }
