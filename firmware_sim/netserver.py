"""A simulated LoRaWAN network server: ChirpStack v4's MQTT integration, played on a broker.

It publishes what ChirpStack publishes for each device (``up``, ``join``,
``status``, ``log``, and ``txack``/``ack`` for downlinks), shaped as the spec's
section 5 shows (proto3 JSON, lowerCamelCase, base64 ``data``), and takes
``command/down`` as ChirpStack does: it checks the DevEUI against the topic,
keeps the downlink, and answers with a ``txack`` and, for a confirmed one,
an ``ack``. Tests read what it received from ``downlinks``.

The event builders are plain functions so property tests can round-trip them
through the gateway's parser.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import aiomqtt

log = logging.getLogger(__name__)

APPLICATION_ID = "0b0f6a2c-1d63-4a8e-9a57-3c1f0e4d2b10"
TENANT_ID = "52f14cd4-c6f1-4fbd-8f87-4025e1d49242"
GATEWAY_EUI = "24e124fffef54092"
PROFILES = {
    "em310-tilt": "Milesight EM310-TILT",
    "em400-mud": "Milesight EM400-MUD",
    "em400-udl": "Milesight EM400-UDL",
    "em310-udl": "Milesight EM310-UDL",
    "dds75-lb": "Dragino DDS75-LB",
}


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def device_info(
    dev_eui: str, *, model: str = "", application_id: str = APPLICATION_ID, name: str = ""
) -> dict[str, Any]:
    return {
        "tenantId": TENANT_ID,
        "tenantName": "ChirpStack",
        "applicationId": application_id,
        "applicationName": "manhole-covers",
        "deviceProfileId": "7d3e2b1a-5c4f-4e0a-8b9c-0a1b2c3d4e5f",
        "deviceProfileName": PROFILES.get(model, model),
        "deviceName": name or f"{model}-{dev_eui[-4:]}",
        "devEui": dev_eui,
        "deviceClassEnabled": "CLASS_A",
        "tags": {},
    }


def up_event(
    dev_eui: str,
    data: bytes,
    *,
    f_port: int,
    f_cnt: int,
    deduplication_id: str | None = None,
    model: str = "",
    application_id: str = APPLICATION_ID,
    rx: list[tuple[int, float]] | None = None,
) -> dict[str, Any]:
    """An ``event/up`` as ChirpStack publishes it; RX is (rssi, snr) per receiving gateway."""
    rx = rx if rx is not None else [(-87, 7.5)]
    return {
        "deduplicationId": deduplication_id or str(uuid.uuid4()),
        "time": _now(),
        "deviceInfo": device_info(dev_eui, model=model, application_id=application_id),
        "devAddr": "01ab23cd",
        "adr": True,
        "dr": 5,
        "fCnt": f_cnt,
        "fPort": f_port,
        "confirmed": False,
        "data": base64.b64encode(data).decode("ascii"),
        "rxInfo": [
            {
                "gatewayId": f"{GATEWAY_EUI[:-2]}{i:02x}",
                "uplinkId": 40721 + i,
                "nsTime": _now(),
                "rssi": rssi,
                "snr": snr,
                "channel": 2,
                "context": "AAAAAAAAAAAAJgAAzs0Vtg==",
                "metadata": {"region_config_id": "eu868", "region_common_name": "EU868"},
                "crcStatus": "CRC_OK",
            }
            for i, (rssi, snr) in enumerate(rx)
        ],
        "txInfo": {
            "frequency": 868100000,
            "modulation": {
                "lora": {"bandwidth": 125000, "spreadingFactor": 7, "codeRate": "CR_4_5"}
            },
        },
        "regionConfigId": "eu868",
    }


def join_event(
    dev_eui: str, *, model: str = "", application_id: str = APPLICATION_ID
) -> dict[str, Any]:
    return {
        "deduplicationId": str(uuid.uuid4()),
        "time": _now(),
        "deviceInfo": device_info(dev_eui, model=model, application_id=application_id),
        "devAddr": "01ab23ce",
        "regionConfigId": "eu868",
    }


def status_event(
    dev_eui: str,
    *,
    battery_level: float = 0.0,
    external_power: bool = False,
    unavailable: bool = False,
    margin: int = 7,
    model: str = "",
) -> dict[str, Any]:
    return {
        "deduplicationId": str(uuid.uuid4()),
        "time": _now(),
        "deviceInfo": device_info(dev_eui, model=model),
        "margin": margin,
        "externalPowerSource": external_power,
        "batteryLevelUnavailable": unavailable,
        "batteryLevel": battery_level,
    }


def log_event(dev_eui: str, *, level: str, code: str, description: str) -> dict[str, Any]:
    return {
        "time": _now(),
        "deviceInfo": device_info(dev_eui),
        "level": level,
        "code": code,
        "description": description,
        "context": {},
    }


def txack_event(dev_eui: str, queue_item_id: str, f_cnt_down: int) -> dict[str, Any]:
    return {
        "downlinkId": 3001,
        "time": _now(),
        "deviceInfo": device_info(dev_eui),
        "queueItemId": queue_item_id,
        "fCntDown": f_cnt_down,
        "gatewayId": GATEWAY_EUI,
        "txInfo": {"frequency": 869525000},
    }


def ack_event(
    dev_eui: str, queue_item_id: str, f_cnt_down: int, *, acknowledged: bool
) -> dict[str, Any]:
    return {
        "deduplicationId": str(uuid.uuid4()),
        "time": _now(),
        "deviceInfo": device_info(dev_eui),
        "queueItemId": queue_item_id,
        "acknowledged": acknowledged,
        "fCntDown": f_cnt_down,
    }


def event_topic(dev_eui: str, event: str, application_id: str = APPLICATION_ID) -> str:
    return f"application/{application_id}/device/{dev_eui}/event/{event}"


@dataclass(frozen=True)
class ReceivedDownlink:
    dev_eui: str
    queue_item_id: str
    f_port: int
    data: bytes
    confirmed: bool


@dataclass
class NetworkServer:
    """Publishes device events to a broker and answers ``command/down`` (async context manager)."""

    host: str
    port: int
    application_id: str = APPLICATION_ID
    # A fixed client id with a persistent session: the broker keeps the downlinks
    # published while this network server is away (as for a real ChirpStack).
    session: str | None = None
    answer_downlinks: bool = True  # txack, and ack for confirmed ones
    ack_downlinks: bool = True  # the device acknowledges (False: ack with acknowledged false)
    downlinks: list[ReceivedDownlink] = field(default_factory=list)
    refused_downlinks: list[str] = field(default_factory=list)
    _client: aiomqtt.Client | None = None
    _task: asyncio.Task[None] | None = None
    _f_cnt_down: int = 0
    _downlink_arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def __aenter__(self) -> Self:
        self._client = aiomqtt.Client(
            self.host,
            self.port,
            identifier=self.session or f"sim-chirpstack-{uuid.uuid4().hex[:8]}",
            clean_session=self.session is None,
        )
        await self._client.__aenter__()
        await self._client.subscribe("application/+/device/+/command/+", qos=1)
        self._task = asyncio.create_task(self._commands(), name="sim-chirpstack-commands")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task
        if self._client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await self._client.__aexit__(exc_type, exc, tb)

    async def publish(self, dev_eui: str, event: str, body: dict[str, Any] | bytes) -> None:
        assert self._client is not None
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self._client.publish(event_topic(dev_eui, event, self.application_id), payload, qos=1)

    async def publish_raw(self, topic: str, payload: bytes) -> None:
        assert self._client is not None
        await self._client.publish(topic, payload, qos=1)

    async def up(
        self, dev_eui: str, data: bytes, *, f_port: int, f_cnt: int, model: str = "", **kw: Any
    ) -> dict[str, Any]:
        body = up_event(
            dev_eui,
            data,
            f_port=f_port,
            f_cnt=f_cnt,
            model=model,
            application_id=self.application_id,
            **kw,
        )
        await self.publish(dev_eui, "up", body)
        return body

    async def join(self, dev_eui: str, *, model: str = "") -> None:
        await self.publish(
            dev_eui, "join", join_event(dev_eui, model=model, application_id=self.application_id)
        )

    async def wait_downlinks(self, count: int) -> list[ReceivedDownlink]:
        """Until COUNT downlinks have arrived (the caller bounds the wait)."""
        while len(self.downlinks) < count:
            self._downlink_arrived.clear()
            await self._downlink_arrived.wait()
        return self.downlinks

    async def _commands(self) -> None:
        assert self._client is not None
        async for message in self._client.messages:
            levels = str(message.topic).split("/")
            if len(levels) != 6 or levels[-1] != "down" or not isinstance(message.payload, bytes):
                continue
            try:
                body = json.loads(message.payload)
                downlink = ReceivedDownlink(
                    dev_eui=levels[3],
                    queue_item_id=body.get("id") or str(uuid.uuid4()),
                    f_port=int(body["fPort"]),
                    data=base64.b64decode(body["data"], validate=True),
                    confirmed=bool(body.get("confirmed", False)),
                )
            except (ValueError, KeyError, TypeError) as err:
                self.refused_downlinks.append(str(err))
                continue
            if body.get("devEui") != levels[3]:  # ChirpStack refuses these too (mqtt.rs)
                self.refused_downlinks.append(f"devEui {body.get('devEui')!r} is not the topic's")
                continue
            self.downlinks.append(downlink)
            self._downlink_arrived.set()
            if self.answer_downlinks:
                await self._answer(downlink)

    async def _answer(self, downlink: ReceivedDownlink) -> None:
        self._f_cnt_down += 1
        dev_eui, item = downlink.dev_eui, downlink.queue_item_id
        await self.publish(dev_eui, "txack", txack_event(dev_eui, item, self._f_cnt_down))
        if downlink.confirmed:
            body = ack_event(dev_eui, item, self._f_cnt_down, acknowledged=self.ack_downlinks)
            await self.publish(dev_eui, "ack", body)
