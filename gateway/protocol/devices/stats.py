"""Counters for an input that decodes device payloads: every refusal and partial by reason."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from gateway.protocol.devices.base import Decoded, DeviceDecodeError, DeviceReason

# Reasons a reading can be partial for (the walk stopped early, the prefix kept).
PARTIAL_REASONS = (DeviceReason.UNKNOWN_CHANNEL,)


@dataclass
class DeviceStats:
    """Only ever incremented; ``as_dict`` has every key from the start, zero or not."""

    decoded: int = 0  # payloads accepted, partial ones included
    readings: int = 0  # readings in them (a datalog or NB-IoT frame has several)
    partial: Counter[str] = field(default_factory=Counter)
    rejected: Counter[DeviceReason] = field(default_factory=Counter)

    def accepted(self, decoded: Decoded) -> None:
        self.decoded += 1
        parts = decoded.readings or (decoded,)
        self.readings += len(parts)
        for part in parts:
            if part.partial is not None:
                self.partial[part.partial] += 1

    def refused(self, err: DeviceDecodeError) -> None:
        self.rejected[err.reason] += 1

    def as_dict(self) -> dict[str, int]:
        out = {"decoded": self.decoded, "readings": self.readings}
        out.update({f"partial_{r.value}": self.partial[r.value] for r in PARTIAL_REASONS})
        out.update({f"rejected_{r.value}": self.rejected[r] for r in DeviceReason})
        return out
