"""LoRaWAN sensors through a ChirpStack v4 MQTT integration (``[[lorawan]]``).

ChirpStack does the radio side (joins, keys, frame counters, de-duplication
across gateways) and publishes one JSON event per device event on a broker;
this input subscribes to them (QoS 1, persistent session), decodes ``data``
itself by the registered device's model and fPort (ChirpStack's optional
``object`` is never used), and hands the engine ``Observation``s. It also
enqueues downlinks on ChirpStack (``command/down``) and turns ``txack`` and
``ack`` into outcomes reported upstream.

Every event is hostile: size-capped before parsing, checked field by field,
and a bad one is counted by reason and logged; none ends the task. Memory is
bounded: the de-duplication window, the unknown-device counter, the downlink
outbox and the outcome map all have fixed sizes (``[[lorawan]]`` keys).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.backoff import Backoff, sleep_or_stop
from gateway.config import LorawanConfig, MqttProtocol, TlsConfig
from gateway.drivers.base import PortState, Sink
from gateway.drivers.observe import (
    BoundedCounter,
    DeviceLookup,
    RecentKeys,
    is_critical,
    observations,
)
from gateway.errors import GatewayError
from gateway.mqtt_client import plain_socket_io
from gateway.observation import (
    DeviceEvent,
    DeviceEventKind,
    DeviceRef,
    Link,
    Observation,
    Purpose,
    Quantities,
)
from gateway.protocol.chirpstack import (
    AckEvent,
    ChirpstackError,
    Event,
    JoinEvent,
    LogEvent,
    StatusEvent,
    TxAckEvent,
    UpEvent,
    parse_event,
)
from gateway.protocol.devices import DeviceDecodeError, get_model

log = logging.getLogger(__name__)

FRAME_LOG = 9  # per-event logging, below DEBUG (python-can's RECV_LOGGING_LEVEL)
INCOMING_QUEUE = 1000  # messages aiomqtt holds before it drops (and logs) the newest
REMEMBERED_DOWNLINKS = 1000  # sent downlinks whose txack/ack we still wait for
# A frame counter that goes back by more than this without a join is a reset
# (an ABP device restarted), not a late duplicate.
FCNT_RESET_GAP = 16
FCNT_MODULO = 1 << 32
MAX_LOG_KEYS = 64  # distinct (level, code) pairs of ChirpStack log events counted by name


class DownlinkError(GatewayError):
    """A downlink refused; ``code`` is the command answer's (invalid, not_found, refused, busy)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class DownlinkState(StrEnum):
    ENQUEUED = "enqueued"  # published to ChirpStack's command/down (broker PUBACK)
    SENT = "sent"  # txack: a gateway took it for transmission
    ACKNOWLEDGED = "acknowledged"  # ack: the device confirmed it (confirmed downlinks)
    NOT_ACKNOWLEDGED = "not_acknowledged"  # ack with acknowledged false (timed out)


@dataclass(frozen=True, slots=True)
class DownlinkRequest:
    downlink_id: str  # ChirpStack's queue item id (we choose it)
    request_id: str | None  # the platform command's
    device: DeviceRef
    cover_id: str | None
    action: str
    f_port: int
    data: bytes
    confirmed: bool


@dataclass(frozen=True, slots=True)
class DownlinkOutcome:
    request: DownlinkRequest
    state: DownlinkState
    at: float
    f_cnt_down: int | None = None
    gateway_id: str | None = None


OutcomeSink = Callable[[DownlinkOutcome], None]


@dataclass
class _FcntTracker:
    """Loss and duplicate accounting by LoRaWAN uplink frame counter."""

    last: int | None = None
    joined: bool = False  # a join since the last uplink: the counter restarts

    def verdict(self, f_cnt: int) -> tuple[str, int]:
        """``("ok"|"duplicate"|"reset", lost)`` for the next counter."""
        last, rejoined = self.last, self.joined
        self.joined = False
        if last is None or rejoined:
            self.last = f_cnt
            return ("reset" if rejoined and last is not None else "ok"), 0
        if f_cnt == last:
            return "duplicate", 0
        if f_cnt < last:
            if last - f_cnt <= FCNT_RESET_GAP:
                return "duplicate", 0  # a late retransmission
            self.last = f_cnt
            return "reset", 0
        self.last = f_cnt
        return "ok", f_cnt - last - 1


def tls_context(tls: TlsConfig | None) -> ssl.SSLContext | None:
    return None if tls is None else tls.context()


class LorawanInput:
    def __init__(
        self,
        config: LorawanConfig,
        sink: Sink,
        *,
        lookup: DeviceLookup,
        on_outcome: OutcomeSink | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = config.name
        self.config = config
        self._sink = sink
        self._lookup = lookup
        self._on_outcome = on_outcome
        self._clock = clock
        self.state = PortState.CLOSED
        self.connects = 0
        self.last_error: str | None = None
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self._seen: RecentKeys[str] = RecentKeys(config.dedup_window)  # deduplicationIds
        self._fcnt: dict[str, _FcntTracker] = {}  # registered devices only
        self._applications: dict[str, str] = {}  # DevEUI → ChirpStack application id
        self._outbox: deque[DownlinkRequest] = deque()
        self._outbox_ready = asyncio.Event()
        self._sent: OrderedDict[str, DownlinkRequest] = OrderedDict()
        self.counts: Counter[str] = Counter()
        self.rejected: Counter[str] = Counter()
        self.unknown_devices = BoundedCounter(config.unknown_devices_tracked)
        self.log_events: Counter[str] = Counter()

    # --- status ---

    def status(self) -> dict[str, Any]:
        return {
            "kind": "lorawan",
            "broker": f"{self.config.host}:{self.config.port}",
            "topic": self.config.topic,
            "state": self.state.value,
            "connects": self.connects,
            "last_error": self.last_error,
            "frames": self.counts["up"],  # uplink events taken (the status table's column)
            "uplinks": self.counts["up"],
            "observations": self.counts["observations"],
            "duplicates": self.counts["duplicates"],
            "fcnt_duplicates": self.counts["fcnt_duplicates"],
            "lost_frames": self.counts["lost_frames"],
            "fcnt_resets": self.counts["fcnt_resets"],
            "joins": self.counts["join"],
            "status_events": self.counts["status"],
            "log_events": dict(self.log_events),
            "ignored_events": self.counts["ignored"],
            "partial": self.counts["partial"],
            "unknown_devices": self.unknown_devices.total,
            "unknown_device_ids": self.unknown_devices.top(),
            "downlinks_enqueued": self.counts["downlinks_enqueued"],
            "downlinks_waiting": len(self._outbox),
            **{f"rejected_{reason}": n for reason, n in sorted(self.rejected.items())},
        }

    # --- events from ChirpStack ---

    def handle(self, topic: str, payload: bytes) -> None:
        """One integration message; never raises (a bad one is counted and logged)."""
        try:
            event = parse_event(topic, payload, max_bytes=self.config.max_event_bytes)
        except ChirpstackError as err:
            self.rejected[err.reason.value] += 1
            log.log(logging.DEBUG, "lorawan %s: %s refused: %s", self.name, topic[:200], err)
            return
        if event is None:
            self.counts["ignored"] += 1
            return
        try:
            self._dispatch(event)
        except Exception:  # a bug must cost one event, never the input
            self.rejected["internal"] += 1
            log.exception("lorawan %s: event on %s failed", self.name, topic[:200])

    def _dispatch(self, event: Event) -> None:
        at = self._clock()
        dev_eui = event.device.dev_eui
        match event:
            case UpEvent():
                self.counts["up"] += 1
                self._uplink(event, at)
            case JoinEvent():
                self.counts["join"] += 1
                found = self._registered(dev_eui)
                if found is not None:
                    self._fcnt.setdefault(dev_eui, _FcntTracker()).joined = True
                    self._remember_application(event)
                    rejoined = DeviceEvent(
                        DeviceEventKind.REJOINED, at, detail=_detail(dev_addr=event.dev_addr)
                    )
                    self._emit(
                        Observation(
                            found[0], self.name, at, events=(rejoined,), purpose=Purpose.STATUS
                        )
                    )
            case StatusEvent():
                self.counts["status"] += 1
                found = self._registered(dev_eui)
                if found is not None:
                    self._remember_application(event)
                    self._emit(
                        Observation(
                            found[0],
                            self.name,
                            at,
                            quantities=Quantities(battery_pct=event.battery_pct),
                            extra=_detail(
                                network_status={
                                    "external_power": event.external_power,
                                    "battery_unavailable": event.battery_unavailable,
                                    "margin_db": event.margin_db,
                                }
                            ),
                            purpose=Purpose.STATUS,
                        )
                    )
            case LogEvent():
                key = f"{event.level.lower()}:{event.code or '-'}"
                first = key not in self.log_events
                if not first or len(self.log_events) < MAX_LOG_KEYS:
                    self.log_events[key] += 1
                # The first of a kind is worth a look; repeats are in the counters.
                level = {"ERROR": logging.WARNING, "WARNING": logging.INFO}.get(
                    event.level, logging.DEBUG
                )
                level = level if first else logging.DEBUG
                log.log(
                    level,
                    "lorawan %s: ChirpStack %s %s for %s: %s",
                    self.name,
                    event.level,
                    event.code,
                    dev_eui,
                    event.description[:200],
                )
            case TxAckEvent():
                self._outcome(event.queue_item_id, DownlinkState.SENT, at, event)
            case AckEvent():
                state = (
                    DownlinkState.ACKNOWLEDGED
                    if event.acknowledged
                    else DownlinkState.NOT_ACKNOWLEDGED
                )
                self._outcome(event.queue_item_id, state, at, event)

    def _registered(self, dev_eui: str) -> tuple[DeviceRef, str | None] | None:
        found = self._lookup(dev_eui)
        if found is None:
            self.unknown_devices.add(dev_eui)
            log.log(FRAME_LOG, "lorawan %s: %s is not in the registry", self.name, dev_eui)
        return found

    def _remember_application(self, event: UpEvent | JoinEvent | StatusEvent) -> None:
        if event.device.application_id:
            self._applications[event.device.dev_eui] = event.device.application_id

    def _uplink(self, event: UpEvent, at: float) -> None:
        if event.deduplication_id in self._seen:
            self.counts["duplicates"] += 1
            return
        found = self._registered(event.device.dev_eui)
        if found is None:
            return
        self._seen.add(event.deduplication_id)
        self._remember_application(event)
        device, _cover = found
        tracker = self._fcnt.setdefault(device.device_id, _FcntTracker())
        verdict, lost = tracker.verdict(event.f_cnt)
        if verdict == "duplicate":
            self.counts["fcnt_duplicates"] += 1
            return
        if verdict == "reset":
            self.counts["fcnt_resets"] += 1
        self.counts["lost_frames"] += lost
        try:
            decoded = get_model(device.model).decode(event.data, fport=event.f_port, at=at)
        except DeviceDecodeError as err:
            self.rejected[f"decode_{err.reason.value}"] += 1
            log.debug(
                "lorawan %s: %s fCnt %d fPort %d refused: %s",
                self.name,
                device,
                event.f_cnt,
                event.f_port,
                err,
            )
            return
        if decoded.partial:
            self.counts["partial"] += 1
        link = Link(rssi_dbm=event.rssi_dbm, snr_db=event.snr_db)
        for observation in observations(
            decoded,
            device=device,
            source=self.name,
            at=at,
            link=link,
            counter=event.f_cnt,
            message_id=event.deduplication_id,
            raw=event.data,
            extra={
                "lorawan": {
                    "f_port": event.f_port,
                    "f_cnt": event.f_cnt,
                    "gateways": event.gateways,
                }
            },
            counter_modulus=FCNT_MODULO,
        ):
            self._emit(observation)

    def _emit(self, observation: Observation) -> None:
        self.counts["observations"] += 1
        log.log(FRAME_LOG, "lorawan %s: %s", self.name, observation)
        self._sink(observation, is_critical(observation))

    # --- downlinks ---

    def knows(self, dev_eui: str) -> bool:
        """Whether this input has heard the device (so knows its ChirpStack application)."""
        return dev_eui in self._applications

    def enqueue(self, request: DownlinkRequest) -> str:
        """Queue a downlink for ChirpStack; its application id; raises ``DownlinkError``."""
        application = self._applications.get(request.device.device_id) or (
            self.config.application_id
        )
        if not application and "{application_id}" in self.config.downlink_topic:
            raise DownlinkError(
                "refused",
                f"no ChirpStack application id known for {request.device.device_id} yet: "
                f"wait for its first uplink or set lorawan.application_id",
            )
        if len(self._outbox) >= self.config.downlink_queue:
            raise DownlinkError("busy", f"{len(self._outbox)} downlinks already waiting")
        self._outbox.append(request)
        self._outbox_ready.set()
        return application or ""

    def _down_topic(self, request: DownlinkRequest) -> str:
        application = self._applications.get(request.device.device_id) or (
            self.config.application_id or ""
        )
        return self.config.downlink_topic.format(
            application_id=application, dev_eui=request.device.device_id
        )

    async def _send_downlinks(self, client: aiomqtt.Client) -> None:
        """Publish queued downlinks; one leaves the outbox only when the broker has it."""
        while True:
            while self._outbox:
                request = self._outbox[0]
                command = {
                    "id": request.downlink_id,
                    "devEui": request.device.device_id,
                    "confirmed": request.confirmed,
                    "fPort": request.f_port,
                    "data": _b64(request.data),
                }
                await client.publish(self._down_topic(request), json.dumps(command), qos=1)
                self._outbox.popleft()
                self.counts["downlinks_enqueued"] += 1
                self._sent[request.downlink_id] = request
                while len(self._sent) > REMEMBERED_DOWNLINKS:
                    self._sent.popitem(last=False)
                log.info(
                    "lorawan %s: downlink %s (%s) for %s enqueued on ChirpStack",
                    self.name,
                    request.action,
                    request.downlink_id,
                    request.device,
                )
                self._report(DownlinkOutcome(request, DownlinkState.ENQUEUED, self._clock()))
            self._outbox_ready.clear()
            await self._outbox_ready.wait()

    def _outcome(
        self, queue_item_id: str, state: DownlinkState, at: float, event: TxAckEvent | AckEvent
    ) -> None:
        self.counts[f"downlink_{state.value}"] += 1
        request = self._sent.get(queue_item_id)
        if request is None:
            return  # someone else's downlink (the ChirpStack UI, another application)
        if event.device.dev_eui != request.device.device_id:
            self.rejected["downlink_device_mismatch"] += 1
            return
        gateway_id = event.gateway_id if isinstance(event, TxAckEvent) else None
        self._report(DownlinkOutcome(request, state, at, event.f_cnt_down, gateway_id or None))

    def _report(self, outcome: DownlinkOutcome) -> None:
        if self._on_outcome is not None:
            self._on_outcome(outcome)

    # --- the connection ---

    def _client(self) -> aiomqtt.Client:
        c = self.config
        v5 = c.protocol is MqttProtocol.V5
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = c.session_expiry_s
        client = aiomqtt.Client(
            c.host,
            c.port,
            username=c.username,
            password=c.password,
            identifier=c.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            clean_session=None if v5 else False,
            # v5 resumes the session; v3.1.1 ignores clean_start and uses clean_session.
            clean_start=False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            keepalive=c.keepalive_s,
            properties=properties,
            tls_context=tls_context(c.tls),
            max_queued_incoming_messages=INCOMING_QUEUE,
            logger=logging.getLogger("gateway.lorawan.mqtt"),
        )
        plain_socket_io(client._client)  # no OpenSSL loaded without TLS
        return client

    async def run(self, stop: asyncio.Event) -> None:
        """Subscribe, serve, reconnect with the uplink's capped jittered backoff, until stop."""
        while not stop.is_set():
            self.state = PortState.OPENING
            try:
                async with self._client() as client:
                    await client.subscribe(self.config.topic, qos=1)
                    self._connected()
                    await self._serve(client, stop)
            except* aiomqtt.MqttError as errors:
                self._failed(errors.exceptions[0])
            if stop.is_set():
                break
            self.state = PortState.DOWN
            await sleep_or_stop(stop, self._backoff.next_delay())
        self.state = PortState.CLOSED

    def _connected(self) -> None:
        self.state = PortState.OPEN
        self.connects += 1
        self.last_error = None
        self._backoff.reset()
        log.info(
            "lorawan %s: subscribed to %s on %s:%d",
            self.name,
            self.config.topic,
            self.config.host,
            self.config.port,
        )

    def _failed(self, err: BaseException) -> None:
        first = self.state is PortState.OPEN or self.last_error is None
        self.last_error = str(err) or type(err).__name__
        log.log(
            logging.WARNING if first else logging.DEBUG,
            "lorawan %s: broker %s:%d down: %s",
            self.name,
            self.config.host,
            self.config.port,
            self.last_error,
        )

    async def _serve(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        async with asyncio.TaskGroup() as tasks:
            reader = tasks.create_task(self._read(client), name=f"lorawan-{self.name}-read")
            writer = tasks.create_task(
                self._send_downlinks(client), name=f"lorawan-{self.name}-downlinks"
            )
            await stop.wait()
            reader.cancel()
            writer.cancel()

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if isinstance(payload, bytes | bytearray):
                self.handle(str(message.topic), bytes(payload))
            else:
                self.rejected["bad_json"] += 1


def new_downlink_id() -> str:
    return str(uuid.uuid4())


def _frame_info(event: UpEvent) -> dict[str, int]:
    return {"f_port": event.f_port, "f_cnt": event.f_cnt, "gateways": event.gateways}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _detail(**values: Any) -> MappingProxyType[str, Any]:
    return MappingProxyType(values)
