"""Milesight NB-IoT cellular frames (EM400-MUD/UDL) → observations, whatever socket carried them.

The frame names its device (IMEI) and SIM, carries the modem's signal quality
(``csq``) and one or more readings in wire order (a history frame). Shared by
``[[udp]]`` with ``format = "milesight-nb"`` and by ``[[tcp]]``: the socket
differs, the checks do not. Hostile like every input: a frame is decoded only
by the device decoder (which raises only ``DeviceDecodeError``), an unknown
IMEI is counted (bounded) and not forwarded, a repeated frame is dropped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from types import MappingProxyType
from typing import Any

from gateway.drivers.base import Sink
from gateway.drivers.observe import (
    BoundedCounter,
    DeviceLookup,
    RecentKeys,
    is_critical,
    observations,
)
from gateway.observation import Link
from gateway.protocol.devices import Decoded, DeviceDecodeError, decode_nb_frame

log = logging.getLogger(__name__)

REPEAT_WINDOW = 1024  # recent frames remembered to drop a repeated one (a modem retry)
FRAME_CNT_MODULO = 1 << 16
# A counter that jumps further than this forward is taken as a device restart, not loss.
MAX_GAP = 1000
CSQ_UNKNOWN = 99


class NbReceiver:
    """Decodes frames for one input; keeps that input's counters."""

    def __init__(
        self,
        name: str,
        sink: Sink,
        *,
        lookup: DeviceLookup,
        clock: Callable[[], float],
        unknown_tracked: int = 256,
    ) -> None:
        self.name = name
        self._sink = sink
        self._lookup = lookup
        self._clock = clock
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.unknown_devices = BoundedCounter(unknown_tracked)
        self._recent: RecentKeys[bytes] = RecentKeys(REPEAT_WINDOW)
        self._last_cnt: dict[str, int] = {}  # registered IMEIs only

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames": self.counts["frames"],
            "observations": self.counts["observations"],
            "duplicates": self.counts["duplicates"],
            "lost_frames": self.counts["lost_frames"],
            "partial": self.counts["partial"],
            "unknown_devices": self.unknown_devices.total,
            "unknown_device_ids": self.unknown_devices.top(),
            **{f"rejected_{reason}": n for reason, n in sorted(self.rejected.items())},
        }

    def frame(self, data: bytes, peer: str) -> bool:
        """One whole frame; False if it was refused. Never raises."""
        at = self._clock()
        try:
            frame = decode_nb_frame(data, at=at)
        except DeviceDecodeError as err:
            self.rejected[err.reason.value] += 1
            log.debug("nbiot %s: frame from %s refused: %s", self.name, peer, err)
            return False
        self.counts["frames"] += 1
        found = self._lookup(frame.imei)
        if found is None:
            self.unknown_devices.add(frame.imei)
            log.debug(
                "nbiot %s: IMEI %s (from %s) is not in the registry", self.name, frame.imei, peer
            )
            return True
        device, _cover = found
        if device.model != frame.model:
            frame = decode_nb_frame(data, at=at, model=device.model)  # labels only
        if data in self._recent:
            self.counts["duplicates"] += 1
            return True
        self._recent.add(data)
        last = self._last_cnt.get(frame.imei)
        if last is not None:
            gap = (frame.frame_cnt - last) % FRAME_CNT_MODULO
            if 1 < gap <= MAX_GAP:
                self.counts["lost_frames"] += gap - 1
        self._last_cnt[frame.imei] = frame.frame_cnt
        link = Link(csq=None if frame.csq == CSQ_UNKNOWN else frame.csq)
        decoded = Decoded(
            model=device.model,
            partial=next((r.partial for r in frame.readings if r.partial), None),
            extra=MappingProxyType(
                {
                    "nbiot": {
                        "frame_cnt": frame.frame_cnt,
                        "csq": frame.csq,
                        "imsi": frame.imsi,
                        "iccid": frame.iccid,
                        "sn": frame.sn,
                    }
                }
            ),
            readings=frame.readings,
        )
        if decoded.partial:
            self.counts["partial"] += 1
        for observation in observations(
            decoded,
            device=device,
            source=self.name,
            at=at,
            link=link,
            counter=frame.frame_cnt,
            message_id=None,
            raw=data,
        ):
            self.counts["observations"] += 1
            self._sink(observation, is_critical(observation))
        return True
