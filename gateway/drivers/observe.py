"""From a device model's ``Decoded`` to the ``Observation``s the engine takes.

Shared by the inputs that carry commercial sensors (LoRaWAN through a network
server, NB-IoT over UDP or TCP): a payload with several readings (an NB-IoT
history frame, a Dragino datalog) becomes several observations in wire order,
and what the payload says once (device info, a configuration echo) travels
with the first.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Generic, TypeVar

from gateway.observation import DeviceRef, Link, Observation, Purpose
from gateway.protocol.devices import Decoded

MAX_COUNTED_IDS = 256  # default for unknown-device counters kept by id

K = TypeVar("K", bound=Hashable)

DeviceLookup = Callable[[str], tuple[DeviceRef, str | None] | None]
"""A DevEUI or IMEI → the registered device and its cover id; None when not registered."""


def observations(
    decoded: Decoded,
    *,
    device: DeviceRef,
    source: str,
    at: float,
    link: Link,
    counter: int | None,
    message_id: str | None,
    raw: bytes,
    extra: dict[str, Any] | None = None,
    counter_modulus: int = 1 << 16,
) -> list[Observation]:
    """One observation per reading; the payload-wide events and extras ride on the first.

    Only the first reading carries the transport's counter: the others came in
    the same message, and the engine must not take them for a counter reused
    with other content.
    """
    readings = decoded.readings or (decoded,)
    out: list[Observation] = []
    for i, reading in enumerate(readings):
        events = reading.events
        merged: dict[str, Any] = dict(reading.extra)
        if i == 0 and decoded.readings:
            events = decoded.events + events
            merged = {**decoded.extra, **merged}
        if extra:
            merged.update(extra)
        if len(readings) > 1:
            merged["reading_index"] = i
        out.append(
            Observation(
                device=device,
                source=source,
                at=reading.at if reading.at is not None else at,
                quantities=reading.quantities,
                events=events,
                link=link,
                counter=counter if i == 0 else None,
                counter_modulus=counter_modulus,
                # A device's own alarm uplink is an event: judged, never a baseline.
                purpose=Purpose.EVENT if reading.quantities.device_alarms else Purpose.REPORT,
                # Each reading keeps an id of its own so the engine's
                # idempotency does not fold a history frame into one reading.
                message_id=(
                    message_id if message_id is None or len(readings) == 1 else f"{message_id}#{i}"
                ),
                partial=reading.partial or decoded.partial,
                raw=raw if i == 0 else b"",
                extra=MappingProxyType(merged),
            )
        )
    return out


def is_critical(observation: Observation) -> bool:
    """What must never be shed under overload: the device's own alarm evidence."""
    q = observation.quantities
    return bool(observation.events or q.device_alarms or q.cover_displaced)


@dataclass
class BoundedCounter:
    """Counts by key (unregistered device ids), remembering at most ``limit`` keys.

    An attacker can make up any number of ids; past the limit only the total grows.
    """

    limit: int = MAX_COUNTED_IDS
    total: int = 0
    by_key: Counter[str] = field(default_factory=Counter)

    def add(self, key: str) -> None:
        self.total += 1
        if key in self.by_key or len(self.by_key) < self.limit:
            self.by_key[key] += 1

    def top(self, n: int = 20) -> dict[str, int]:
        return dict(self.by_key.most_common(n))


class RecentKeys(Generic[K]):
    """The last ``limit`` keys added (deduplication ids, whole frames), oldest forgotten first.

    A sender can repeat or make up keys without end; remembering only a window
    bounds the memory, at the price of not recognising a repeat older than it.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._keys: OrderedDict[K, None] = OrderedDict()

    def __contains__(self, key: K) -> bool:
        return key in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, key: K) -> None:
        self._keys[key] = None
        while len(self._keys) > self.limit:
            self._keys.popitem(last=False)
