"""Which receptions the engine takes, and what it remembers of each device.

A device is taken only from its input (the registry's ``input`` column, else
the first input it was heard on; a binding to an input no longer configured
is void). A duplicate is a true retransmission only (``seqtrack``); the
binding is checked before the counters are touched, so an impostor leaves no
trace in them. Above ``[limits] device_frames_per_minute`` a device's
readings are judged but not forwarded. Polled sensors are the gateway's own
and paced by it: never rate limited, never forgotten, never persisted.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum

from gateway.config import LimitsConfig
from gateway.edge import state
from gateway.edge.devices import SCN1, DeviceState, DeviceTable, Token, device_key
from gateway.edge.seqtrack import digest
from gateway.edge.state import StateLog
from gateway.observation import DeviceEventKind, DeviceRef, Observation
from gateway.registry import Cover

log = logging.getLogger(__name__)

_RESTARTS = frozenset({DeviceEventKind.BOOT, DeviceEventKind.REJOINED})


@dataclass
class EdgeStats:
    duplicates: int = 0
    lost_frames: int = 0
    unregistered_frames: int = 0
    sequence_anomalies: int = 0  # a used counter with other content: forged or confused
    wrong_input: int = 0  # a device heard on an input it is not bound to: refused
    rate_limited: int = 0  # readings judged but not forwarded (device over its rate)
    partial_readings: int = 0
    lost_by_node: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._lost_limit = 1000  # distinct devices named in lost_by_node

    def count_lost(self, device: str, lost: int) -> None:
        self.lost_frames += lost
        if device in self.lost_by_node or len(self.lost_by_node) < self._lost_limit:
            self.lost_by_node[device] += lost


class Admitted(Enum):
    REFUSED = "refused"  # a duplicate, or from the wrong input
    JUDGE_ONLY = "judge_only"  # over its rate: the rules see it, the platform does not
    FORWARD = "forward"


# Enum members the per-frame path names, as module constants: on Python 3.11 an
# Enum class attribute costs ~0.1 µs a lookup (EnumType.__getattr__), a global ~0.03.
_REFUSED, _JUDGE_ONLY, _FORWARD = Admitted.REFUSED, Admitted.JUDGE_ONLY, Admitted.FORWARD


class Admission:
    def __init__(self, *, stats: EdgeStats, log: StateLog, limits: LimitsConfig) -> None:
        self.stats = stats
        self.limits = limits
        self._log = log
        self.devices = DeviceTable(limits.unregistered_nodes)
        # The configured input names, when known: a binding to any other is void.
        self.known_inputs: frozenset[str] | None = None

    def admit(self, obs: Observation, cover: Cover | None) -> tuple[Admitted, list[Token]]:
        """The verdict on one reception, and the unregistered devices forgotten to make room."""
        # Our own polled sensors are configured, not strangers: never in the LRU.
        # A registered SCN-1 node is kept under its cover's node number (the registry's int).
        key: Token = obs.device
        if cover is not None and cover.node_id is not None and obs.device.model == SCN1:
            key = cover.node_id
        by_id = obs.message_id is not None
        fp = digest(
            obs.message_id.encode() if obs.message_id is not None else obs.fingerprint or obs.raw
        )
        return self._admit(
            obs.device,
            key,
            cover,
            source=obs.source,
            at=obs.at,
            counter=obs.counter,
            fp=fp,
            by_id=by_id,
            counted=obs.counter is not None or by_id,
            restart=bool(obs.events) and any(e.kind in _RESTARTS for e in obs.events),
            polled=obs.polled,
            partial=bool(obs.partial),
            modulus=obs.counter_modulus,
        )

    def heard_again(self, state: DeviceState, cover: Cover | None, *, at: float) -> None:
        """What ``admit`` does with a polled reading of a device it forwarded before, when
        neither the device's cover nor its state has changed since: the device was heard."""
        if cover is None:
            self.stats.unregistered_frames += 1
        state.last_seen = at

    def admit_node(
        self,
        node_id: int,
        device: DeviceRef,
        cover: Cover | None,
        *,
        source: str,
        at: float,
        seq: int,
        fingerprint: bytes,
    ) -> tuple[Admitted, list[Token]]:
        """``admit`` of an SCN-1 frame that says nothing of a restart, from its parts.

        The routine path builds no ``Observation``; this is what ``admit`` makes of
        the one ``adapters.from_frame`` would build (no message id, never polled,
        never partial, a 16-bit counter). A registered node is kept under its
        cover's node number, which is the frame's: the registry finds it by that.
        """
        return self._admit(
            device,
            node_id,
            cover,
            source=source,
            at=at,
            counter=seq,
            fp=digest(fingerprint),
            by_id=False,
            counted=True,
            restart=False,
            polled=False,
            partial=False,
            modulus=1 << 16,
        )

    def _admit(
        self,
        device: DeviceRef,
        key: Token,
        cover: Cover | None,
        *,
        source: str,
        at: float,
        counter: int | None,
        fp: int,
        by_id: bool,
        counted: bool,
        restart: bool,
        polled: bool,
        partial: bool,
        modulus: int,
    ) -> tuple[Admitted, list[Token]]:
        device_state, forgotten, created = self.devices.touch_new(
            key, registered=cover is not None or polled
        )
        if self.known_inputs is not None and device_state.bound_input not in self.known_inputs:
            device_state.bound_input = None  # bound to an input no longer configured: rebind
        allowed = cover.inputs if cover is not None else ()
        bound_ok = source in allowed if allowed else device_state.bound_input in (None, source)
        if not bound_ok:
            # Checked before the counters are touched: an impostor leaves no trace in them.
            if counted and device_state.counters.seen(counter, fp, by_message_id=by_id):
                self.stats.duplicates += 1  # the same frame heard by another input too
            else:
                self.stats.wrong_input += 1
                log.debug("%s heard on %s, bound elsewhere: refused", device, source)
            return _REFUSED, forgotten
        verdict = None
        if counted:
            verdict = device_state.counters.observe(
                counter, fp, at, restart=restart, by_message_id=by_id, modulus=modulus
            )
            if verdict.duplicate:
                self.stats.duplicates += 1
                return _REFUSED, forgotten
        if device_state.bound_input is None and not polled:
            device_state.bound_input = source
        if verdict is not None:
            if verdict.anomaly:
                self.stats.sequence_anomalies += 1
                log.warning("%s: counter %s reused with other content", device, counter)
            if verdict.lost:
                self.stats.count_lost(device.device_id, verdict.lost)
        if cover is None:
            self.stats.unregistered_frames += 1
        device_state.last_seen = at
        if partial:
            self.stats.partial_readings += 1
        if polled:
            return _FORWARD, forgotten  # the gateway paces its own polls
        # A state made now has no row stored yet: ``new`` lets the row's deletion,
        # if the device is pushed out before the next commit, cost the store nothing.
        self._log.put_live(state.DEVICE + device_key(device), device_state, new=created)
        if not device_state.take_token(at, self.limits.device_frames_per_minute):
            self.stats.rate_limited += 1
            return _JUDGE_ONLY, forgotten
        return _FORWARD, forgotten
