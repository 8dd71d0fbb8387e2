"""Device tracking: who was heard, where, how often, and who has gone silent.

Registered devices are tracked for as long as they are in the registry.
Devices not in the registry are tracked up to a limit (``[limits]
unregistered_nodes``), the least recently heard forgotten first, and nobody
expects to hear from them again, so they never go "offline". Silence is found
with a deadline heap: a tick costs the deadlines that fall due, not the
number of devices.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from gateway.edge.seqtrack import CounterState
from gateway.observation import DeviceRef


@dataclass(slots=True)
class DeviceState:
    last_seen: float | None = None
    bound_input: str | None = None  # the input it was first heard on
    counters: CounterState = field(default_factory=CounterState)
    # Rate limit (a token bucket, not persisted): readings forwarded per minute.
    tokens: float = -1.0
    tokens_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"seen": self.last_seen, "input": self.bound_input, **self.counters.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceState:
        seen = data.get("seen")
        bound = data.get("input")
        return cls(
            last_seen=None if seen is None else float(seen),
            bound_input=None if bound is None else str(bound),
            counters=CounterState.from_json(data),
        )

    def take_token(self, at: float, per_minute: int) -> bool:
        """One reading's worth of the device's rate; False when it has used its share."""
        if self.tokens < 0:
            self.tokens, self.tokens_at = float(per_minute), at
        self.tokens = min(
            float(per_minute), self.tokens + max(0.0, at - self.tokens_at) * per_minute / 60.0
        )
        self.tokens_at = at
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


def device_key(device: DeviceRef) -> str:
    return f"{device.model}:{device.device_id}"


def parse_device_key(key: str) -> DeviceRef:
    model, _, device_id = key.partition(":")
    return DeviceRef(model, device_id)


class DeviceTable:
    """Every device's state: registered ones without limit, others in an LRU of ``limit``."""

    def __init__(self, unregistered_limit: int) -> None:
        self.limit = unregistered_limit
        self.registered: dict[DeviceRef, DeviceState] = {}
        self.unregistered: OrderedDict[DeviceRef, DeviceState] = OrderedDict()
        self.forgotten = 0  # unregistered devices pushed out by newer ones

    def get(self, device: DeviceRef) -> DeviceState | None:
        return self.registered.get(device) or self.unregistered.get(device)

    def touch(self, device: DeviceRef, *, registered: bool) -> tuple[DeviceState, list[DeviceRef]]:
        """The device's state (created if new) and the devices forgotten to make room."""
        if registered:
            state = self.registered.get(device)
            if state is None:
                state = self.unregistered.pop(device, None) or DeviceState()
                self.registered[device] = state
            return state, []
        state = self.unregistered.get(device)
        if state is not None:
            self.unregistered.move_to_end(device)
            return state, []
        state = self.registered.pop(device, None) or DeviceState()
        self.unregistered[device] = state
        return state, self._trim()

    def _trim(self) -> list[DeviceRef]:
        dropped = []
        while len(self.unregistered) > self.limit:
            device, _ = self.unregistered.popitem(last=False)
            dropped.append(device)
            self.forgotten += 1
        return dropped

    def load(self, device: DeviceRef, state: DeviceState, *, registered: bool) -> list[DeviceRef]:
        if registered:
            self.registered[device] = state
            return []
        self.unregistered[device] = state
        return self._trim()

    def regroup(self, is_registered: Any) -> list[DeviceRef]:
        """After a registry reload: move devices between the two groups; those forgotten."""
        for device in [d for d in self.registered if not is_registered(d)]:
            self.unregistered[device] = self.registered.pop(device)
        for device in [d for d in self.unregistered if is_registered(d)]:
            self.registered[device] = self.unregistered.pop(device)
        return self._trim()

    def items(self) -> list[tuple[DeviceRef, DeviceState]]:
        return [*self.registered.items(), *self.unregistered.items()]

    def __len__(self) -> int:
        return len(self.registered) + len(self.unregistered)


class Deadlines:
    """When each watched device falls silent: one heap entry per device at most.

    An entry is checked only when it falls due; a device heard since is pushed
    back to its new deadline then, so hearing a device costs nothing here.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, str, DeviceRef]] = []
        self._queued: set[DeviceRef] = set()

    def watch(self, device: DeviceRef, deadline: float) -> None:
        if device not in self._queued:
            self._queued.add(device)
            heapq.heappush(self._heap, (deadline, device_key(device), device))

    def due(self, now: float) -> list[DeviceRef]:
        out = []
        while self._heap and self._heap[0][0] <= now:
            _, _, device = heapq.heappop(self._heap)
            self._queued.discard(device)
            out.append(device)
        return out

    def next_due(self) -> float | None:
        """The earliest deadline (it may be stale: the device heard since), None if none."""
        return self._heap[0][0] if self._heap else None

    def clear(self) -> None:
        self._heap.clear()
        self._queued.clear()

    def __len__(self) -> int:
        return len(self._heap)
