"""The last frames heard, for a technician's ``frames`` command: bounded in bytes, not per node.

A per-node deque times the number of nodes is what made memory grow with the
city; one history with a byte budget costs the same whatever is out there.
A chatty device pushes older frames of every device out first.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from gateway.values import quick_init

ENTRY_OVERHEAD = 200  # bytes an entry costs besides its raw frame (objects, strings)


@quick_init
@dataclass(frozen=True, slots=True)
class Heard:
    device: str
    at: float
    port: str
    counter: int | None
    msg_type: str
    rssi_dbm: float | None
    snr_db: float | None
    raw: bytes

    @property
    def cost(self) -> int:
        return ENTRY_OVERHEAD + len(self.raw)


class RecentFrames:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: deque[Heard] = deque()

    def add(self, heard: Heard) -> None:
        cost = ENTRY_OVERHEAD + len(heard.raw)  # ``cost``, without the property's call per frame
        if cost > self.max_bytes:
            return
        self._entries.append(heard)
        self.bytes += cost
        while self.bytes > self.max_bytes:
            self.bytes -= ENTRY_OVERHEAD + len(self._entries.popleft().raw)

    def last(self, device: str, count: int, iso: Any) -> list[dict[str, Any]]:
        """The device's last ``count`` frames, oldest first (a scan: a rare command)."""
        found: list[Heard] = []
        for heard in reversed(self._entries):
            if len(found) >= count:
                break
            if heard.device == device:
                found.append(heard)
        return [
            {
                "time": iso(h.at),
                "port": h.port,
                "seq": h.counter,
                "msg_type": h.msg_type,
                "rx_rssi_dbm": h.rssi_dbm,
                "rx_snr_db": h.snr_db,
                "raw_hex": h.raw.hex(" ").upper(),
            }
            for h in reversed(found)
        ]

    def __len__(self) -> int:
        return len(self._entries)
