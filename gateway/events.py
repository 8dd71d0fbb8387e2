"""What the drivers hand the edge logic: frozen, timestamped, one per thing heard.

Times are UTC seconds since the epoch, stamped by the gateway on receipt
(nodes have no clock).
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.observation import Observation
from gateway.protocol.framing import Received
from gateway.values import quick_init


@quick_init
@dataclass(frozen=True, slots=True)
class FrameHeard:
    source: str  # the port's name in the config (``lora0``, ``nbiot``)
    at: float
    received: Received


@quick_init
@dataclass(frozen=True, slots=True)
class SlaveRead:
    bus: str
    address: int
    at: float
    values: dict[str, float]


@quick_init
@dataclass(frozen=True, slots=True)
class SlaveFailed:
    bus: str
    address: int
    at: float
    reason: str
    consecutive: int


# An Observation is the device-neutral form every input converges on (see
# gateway/observation.py); the other three are the older, input-specific forms.
Input = FrameHeard | SlaveRead | SlaveFailed | Observation


def origin(event: Input) -> object:
    """Which device an input speaks for: its inputs must be judged in the order heard."""
    match event:
        case FrameHeard():
            return ("scn1", event.received.frame.node_id)
        case SlaveRead() | SlaveFailed():
            return ("modbus", event.bus, event.address)
    return event.device
