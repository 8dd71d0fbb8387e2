"""Device tracking: who was heard, where, how often, and who has gone silent.

Registered devices are tracked for as long as they are in the registry.
Devices not in the registry are tracked up to a limit (``[limits]
unregistered_nodes``), the least recently heard forgotten first, and nobody
expects to hear from them again, so they never go "offline". Silence is found
with a deadline heap: a tick costs the deadlines that fall due, not the
number of devices.

Memory is per device, so a city's worth of it counts: an SCN-1 node is known
by its number (an int) in the table and the heap, not by a ``DeviceRef`` and
its hex string, and a device's counters live in its state object.
"""

from __future__ import annotations

import heapq
import itertools
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from gateway.edge.seqtrack import CounterState
from gateway.observation import DeviceRef

SCN1 = "scn1"
_OTHERS = 1 << 32  # heap tie-breakers of devices other than SCN-1 nodes start above node ids

Token = int | DeviceRef  # an SCN-1 node by its number; any other device by its ref


def token(device: Token) -> Token:
    """The key a device is kept under: an SCN-1 node's number when its id is canonical."""
    if isinstance(device, int):
        return device
    if device.model == SCN1 and len(device.device_id) == 8:
        try:
            number = int(device.device_id, 16)
        except ValueError:
            return device
        if f"{number:08X}" == device.device_id:
            return number
    return device


def from_token(key: Token) -> DeviceRef:
    return key if isinstance(key, DeviceRef) else DeviceRef(SCN1, f"{key:08X}")


@dataclass(slots=True)
class DeviceState(CounterState):
    """A device's state: its counters (``CounterState``, the same object) and the rest."""

    last_seen: float | None = None
    bound_input: str | None = None  # the input it was first heard on
    # Rate limit (a token bucket, not persisted): readings forwarded per minute.
    tokens: float = -1.0
    tokens_at: float = 0.0

    @property
    def counters(self) -> CounterState:
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "seen": self.last_seen,
            "input": self.bound_input,
            "last": self.last,  # CounterState.to_json's, in its order
            "recent": self.recent_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DeviceState:
        seen = data.get("seen")
        bound = data.get("input")
        counters = CounterState.from_json(data)
        return cls(
            last=counters.last,
            recent=counters.recent,
            last_seen=None if seen is None else float(seen),
            bound_input=None if bound is None else sys.intern(str(bound)),
        )

    def take_token(self, at: float, per_minute: int) -> bool:
        """One reading's worth of the device's rate; False when it has used its share."""
        if self.tokens < 0:  # the first: a full bucket (a stranger heard once, nearly always)
            if per_minute < 1:
                self.tokens, self.tokens_at = float(per_minute), at
                return False
            self.tokens, self.tokens_at = per_minute - 1.0, at
            return True
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
    """Every device's state: registered ones without limit, others in an LRU of ``limit``.

    Both groups are kept by ``token``: a city of SCN-1 nodes costs an int each as
    key, and the strangers' LRU, which churns with every new id heard, hashes an
    int instead of calling a dataclass's ``__hash__`` for every lookup.
    """

    def __init__(self, unregistered_limit: int) -> None:
        self.limit = unregistered_limit
        self.registered: dict[Token, DeviceState] = {}
        self._lru: OrderedDict[Token, DeviceState] = OrderedDict()
        self.forgotten = 0  # unregistered devices pushed out by newer ones

    @property
    def unregistered(self) -> list[DeviceRef]:
        """The unregistered devices, least recently heard first."""
        return [from_token(k) for k in self._lru]

    def get(self, device: Token) -> DeviceState | None:
        key = token(device)
        found = self.registered.get(key)
        if found is None and self._lru:
            found = self._lru.get(key)
        return found

    def touch(self, device: Token, *, registered: bool) -> tuple[DeviceState, list[Token]]:
        """The device's state (created if new) and the devices forgotten to make room (tokens)."""
        state, forgotten, _ = self.touch_new(device, registered=registered)
        return state, forgotten

    def touch_new(
        self, device: Token, *, registered: bool
    ) -> tuple[DeviceState, list[Token], bool]:
        """As ``touch``, and whether the state was made now (the device was not known)."""
        key = token(device)
        if registered:
            state = self.registered.get(key)
            if state is not None:
                return state, [], False
            state = self._lru.pop(key, None)
            created = state is None
            self.registered[key] = state = state or DeviceState()
            return state, [], created
        lru = self._lru
        state = lru.get(key)
        if state is not None:
            lru.move_to_end(key)
            return state, [], False
        state = self.registered.pop(key, None)
        created = state is None
        lru[key] = state = state or DeviceState()
        return state, self._trim() if len(lru) > self.limit else [], created

    def _trim(self) -> list[Token]:
        dropped = []
        while len(self._lru) > self.limit:
            key, _ = self._lru.popitem(last=False)
            dropped.append(key)
            self.forgotten += 1
        return dropped

    def load(self, device: DeviceRef, state: DeviceState, *, registered: bool) -> list[Token]:
        if registered:
            self.registered[token(device)] = state
            return []
        self._lru[token(device)] = state
        return self._trim()

    def regroup(self, is_registered: Any) -> list[Token]:
        """After a registry reload: move devices between the two groups; those forgotten."""
        for key in [k for k in self.registered if not is_registered(from_token(k))]:
            self._lru[key] = self.registered.pop(key)
        for key in [k for k in self._lru if is_registered(from_token(k))]:
            self.registered[key] = self._lru.pop(key)
        return self._trim()

    def items(self) -> list[tuple[DeviceRef, DeviceState]]:
        return [
            *((from_token(k), s) for k, s in self.registered.items()),
            *((from_token(k), s) for k, s in self._lru.items()),
        ]

    def __len__(self) -> int:
        return len(self.registered) + len(self._lru)


class Deadlines:
    """When each watched device falls silent: one heap entry per device at most.

    An entry is checked only when it falls due; a device heard since is pushed
    back to its new deadline then, so hearing a device costs nothing here.
    An SCN-1 node's entry is ``(deadline, number)``; another device's is
    ``(deadline, tie, ref)`` with a tie-breaker above every node number.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int] | tuple[float, int, DeviceRef]] = []
        self._queued: set[Token] = set()
        self._tie = itertools.count(_OTHERS)
        self._last = 0.0

    def watch(self, device: Token, deadline: float) -> None:
        key = token(device)
        if key not in self._queued:
            self._queued.add(key)
            if deadline == self._last:
                deadline = self._last  # one float for the many watched from the same start
            self._last = deadline
            if isinstance(key, int):
                heapq.heappush(self._heap, (deadline, key))
            else:
                heapq.heappush(self._heap, (deadline, next(self._tie), key))

    def due(self, now: float) -> list[DeviceRef]:
        out = []
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            key: Token = entry[2] if len(entry) == 3 else entry[1]
            self._queued.discard(key)
            out.append(from_token(key))
        return out

    def next_due(self) -> float | None:
        """The earliest deadline (it may be stale: the device heard since), None if none."""
        return self._heap[0][0] if self._heap else None

    def clear(self) -> None:
        self._heap.clear()
        self._queued.clear()

    def __len__(self) -> int:
        return len(self._heap)
