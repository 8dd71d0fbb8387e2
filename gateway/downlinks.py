"""The ``device_downlink`` command: a device model's downlink, sent through ChirpStack.

The command names a cover or a device and an action (``set_interval``,
``reboot``, ``rezero``, ``set_thresholds``) with the model's parameters. The
device model encodes the bytes (construct, never a ChirpStack codec); the
``[[lorawan]]`` input that hears the device enqueues them on ChirpStack's
``command/down``. What happens next arrives later as ChirpStack events and is
reported on ``covers/<gateway>/downlink`` against the command's request id:
``enqueued`` (ChirpStack has it), ``sent`` (txack), ``acknowledged`` or
``not_acknowledged`` (ack, for confirmed downlinks).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from gateway.buffer.queue import Lane, Outgoing
from gateway.observation import DeviceRef
from gateway.registry import Registry, device_transport

if TYPE_CHECKING:
    from gateway.drivers.lorawan import DownlinkOutcome, LorawanInput

# The LoRaWAN input and the device codecs are imported by the first downlink
# request: a gateway without LoRaWAN devices never sends one.

log = logging.getLogger(__name__)


def _iso(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Downlinks:
    def __init__(
        self,
        *,
        gateway_id: str,
        topic_root: str,
        registry: Callable[[], Registry],
        emit: Callable[[Outgoing], None],
    ) -> None:
        self.gateway_id = gateway_id
        self.topic = f"{topic_root}/downlink"
        self._registry = registry
        self._emit = emit
        self.inputs: list[LorawanInput] = []

    def request(self, args: dict[str, Any], *, request_id: str | None) -> dict[str, Any]:
        """Validate, encode and enqueue one downlink; raises ``DownlinkError`` with a code."""
        from gateway.drivers.lorawan import (  # noqa: PLC0415
            DownlinkError,
            DownlinkRequest,
            new_downlink_id,
        )
        from gateway.protocol.devices import DeviceDecodeError, get_model  # noqa: PLC0415

        device, cover_id = self._device(args)
        action = str(args["action"])
        params = args.get("params") or {}
        try:
            f_port, data = get_model(device.model).downlink(action, **params)
        except DeviceDecodeError as err:
            raise DownlinkError("invalid", err.detail) from err
        request = DownlinkRequest(
            downlink_id=new_downlink_id(),
            request_id=request_id,
            device=device,
            cover_id=cover_id,
            action=action,
            f_port=f_port,
            data=data,
            confirmed=bool(args.get("confirmed", True)),
        )
        lorawan = self._input_for(device)
        application_id = lorawan.enqueue(request)
        log.info("downlink %s for %s (%s) queued: %s", action, device, cover_id, data.hex())
        return {
            "downlink_id": request.downlink_id,
            "cover_id": cover_id,
            "device": {"model": device.model, "device_id": device.device_id},
            "action": action,
            "f_port": f_port,
            "data_hex": data.hex(),
            "confirmed": request.confirmed,
            "input": lorawan.name,
            "application_id": application_id or None,
            "state": "queued",
        }

    def _device(self, args: dict[str, Any]) -> tuple[DeviceRef, str | None]:
        from gateway.drivers.lorawan import DownlinkError  # noqa: PLC0415
        from gateway.protocol.devices import get_model  # noqa: PLC0415

        registry = self._registry()
        if args.get("device_id"):
            found = registry.device(str(args["device_id"]))
            if found is None:
                raise DownlinkError("not_found", f"no device {args['device_id']!r} in the registry")
            device, cover = found
            if args.get("cover_id") and args["cover_id"] != cover.cover_id:
                raise DownlinkError("invalid", f"{device.device_id} is on cover {cover.cover_id}")
            if device_transport(device.model, device.device_id) != "lorawan":
                raise DownlinkError(
                    "invalid", f"{device} is an NB-IoT device: it takes no downlinks here"
                )
            return device, cover.cover_id
        cover_id = str(args.get("cover_id") or "")
        on_cover = registry.covers.get(cover_id)
        if on_cover is None:
            raise DownlinkError("not_found", f"no cover {cover_id!r} in the registry")
        action = str(args["action"])
        candidates = [
            d
            for d in on_cover.devices
            if device_transport(d.model, d.device_id) == "lorawan"
            and action in get_model(d.model).downlinks
        ]
        if not candidates:
            raise DownlinkError(
                "invalid", f"cover {cover_id} has no LoRaWAN device that takes {action!r}"
            )
        if len(candidates) > 1:
            ids = ", ".join(str(d) for d in candidates)
            raise DownlinkError("invalid", f"cover {cover_id} has several ({ids}): give device_id")
        return candidates[0], cover_id

    def _input_for(self, device: DeviceRef) -> LorawanInput:
        from gateway.drivers.lorawan import DownlinkError  # noqa: PLC0415

        if not self.inputs:
            raise DownlinkError("refused", "no [[lorawan]] input is configured")
        for lorawan in self.inputs:
            if lorawan.knows(device.device_id):
                return lorawan
        return self.inputs[0]

    def outcome(self, outcome: DownlinkOutcome) -> None:
        """An outcome for the platform, as an upstream message (alarm lane: one per message)."""
        request = outcome.request
        msg_id = f"downlink-{request.downlink_id}-{outcome.state.value}"
        payload = {
            "msg_id": msg_id,
            "gateway": self.gateway_id,
            "time": _iso(outcome.at),
            "request_id": request.request_id,
            "downlink_id": request.downlink_id,
            "cover_id": request.cover_id,
            "device": {"model": request.device.model, "device_id": request.device.device_id},
            "action": request.action,
            "state": outcome.state.value,
            "f_port": request.f_port,
            "f_cnt_down": outcome.f_cnt_down,
            "lorawan_gateway_id": outcome.gateway_id,
        }
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        self._emit(Outgoing(msg_id, Lane.ALARM, self.topic, body))
