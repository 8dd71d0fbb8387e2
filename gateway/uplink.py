"""The MQTT uplink: drains the durable queue to the broker, QoS 1, and nothing else.

A message leaves the queue only when the broker has acknowledged it with a
success code (PUBACK); a refusal (MQTT 5 reason code ≥ 0x80) leaves it queued,
as an outage would. Until then it is published again, under the same id.

Each lane has its own path on the connection: an alarm is published the
moment the pipeline commits it, while the commit runs (``Uplink.expedite``;
its row is deleted only once both the PUBACK and the commit are in), with
in-flight slots of its own, whatever telemetry round is under way; telemetry
rows go in rounds of batches bounded by count and bytes, with at most
``TELEMETRY_INFLIGHT_BYTES`` unacknowledged ahead of an alarm. Within a lane,
messages are published in queue order.

The connection is an explicit state machine with capped, jittered backoff
over one or more broker addresses. ``protocol = "auto"`` tries MQTT 5 and
falls back to 3.1.1 for a broker that refuses the version. A clean stop says
``offline`` itself; any other end (an exception anywhere, cancellation) drops
the socket without DISCONNECT, so the broker publishes the last will.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

import aiomqtt
import paho.mqtt.client as mqtt
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import __version__
from gateway.backoff import Backoff
from gateway.buffer.queue import DurableQueue, Lane, Outgoing, Queued, QueueError
from gateway.commands import Answer, Delivery
from gateway.config import MqttProtocol, UplinkConfig
from gateway.edge.engine import iso
from gateway.mqtt_client import (
    VERSION_REFUSED,
    ConnectClosedError,
    PublishRefusedError,
    UplinkClient,
)
from gateway.wire import (
    CONTENT_TYPES,
    TelemetryEncoding,
    WireError,
    cover_id_of,
    encode_batch,
    unpack_row,
)

if TYPE_CHECKING:
    from gateway.cover_records import CoverRecords  # compact encodings only

log = logging.getLogger(__name__)

ROUND_ROWS = 2000  # telemetry readings taken from the queue per publishing round
# ... read in slices of this many readings (whole rows: a row is a chunk of
# readings, ``DurableQueue.peek``): the writer thread holds the GIL while it
# builds the rows, and the event loop (an alarm) waits for it. A probe on the
# loop while peeks ran back to back: p99 lag 6.6-9.3 ms for 2,000 rows a peek,
# 5.1-5.4 ms for 500 (one reading a row, schema 3).
PEEK_ROWS = 500
# Telemetry bytes published and not yet acknowledged. An alarm queues behind
# them in the socket and at the broker: at 1 Mbit/s, 128 KiB is a second.
TELEMETRY_INFLIGHT_BYTES = 128 * 1024
ALARM_ROUND = 100  # alarm rows read per look at the queue (each is published on its own)
LOG_EVERY_S = 60.0  # a persisting connect failure is logged at WARNING at most this often
STOP_GRACE_S = 5.0  # on stop, what is queued gets this long to be acknowledged
GOODBYE_S = 2.0  # then the clean "offline" and DISCONNECT get this long
SESSION_KEY = "uplink.session"  # queue state row: the session counter, across restarts
# MQTT 5 Maximum Packet Size we announce: a broker drops anything larger meant for us,
# so a huge "command" never reaches the box's memory (under it, commands over
# commands.max_payload_bytes are answered "invalid"; 3.1.1 has no such property).
MAX_INCOMING_PACKET = 1 << 20


class UplinkState(StrEnum):
    CONNECTING = "connecting"
    CONNECTED = "connected"
    BACKOFF = "backoff"
    STOPPED = "stopped"


@dataclass
class UplinkStats:
    state: UplinkState = UplinkState.CONNECTING
    connects: int = 0
    reconnects: int = 0
    published_messages: int = 0
    published_rows: int = 0
    last_error: str | None = None
    session: int = 0  # this run of the gateway, counted across restarts
    protocol: str | None = None  # the MQTT version of the current (last) connection
    broker: str | None = None  # host:port of the current (last) connection
    connect_failures: int = 0
    refused: Counter[str] = field(default_factory=Counter)  # publishes refused, by reason
    refusing: str | None = None  # the broker's reason while it refuses what we publish

    @property
    def problem(self) -> str | None:
        """One line for people: why nothing leaves although connected."""
        return f"uplink refused: {self.refusing}" if self.refusing else None

    def report(self) -> dict[str, Any]:
        """The ``uplink`` part of the stats message."""
        return {
            "state": self.state.value,
            "connects": self.connects,
            "reconnects": self.reconnects,
            "published_messages": self.published_messages,
            "published_rows": self.published_rows,
            "session": self.session,
            "protocol": self.protocol,
            "broker": self.broker,
            "connect_failures": self.connect_failures,
            "last_error": self.last_error,
            "refused": dict(self.refused),
            "problem": self.problem,
        }


@dataclass(frozen=True)
class Unit:
    """One MQTT message and the queue rows it carries."""

    topic: str  # empty: nothing to publish, only rows to acknowledge (a damaged row)
    payload: bytes
    seqs: tuple[int, ...]
    encoding: TelemetryEncoding | None = None  # a telemetry batch's; None for everything else
    covers: tuple[str, ...] = ()  # registered covers the batch names (their records' topics)
    count: int = 1  # readings (or the one alarm) it carries
    parts: int = 0  # a row cut into this many units (1 of them): acknowledged with the last


def _report_command_task(task: asyncio.Task[None]) -> None:
    """A lost connection also fails the drain loop; anything else is a bug to see."""
    if task.cancelled() or isinstance(task.exception(), aiomqtt.MqttError):
        return
    log.error("command handling stopped", exc_info=task.exception())


ANSWER_BACKLOG = 1000  # answers waiting to be published; past it an answer is dropped, logged


class CommandSink(Protocol):
    """The command handler as the uplink sees it (``gateway.commands.CommandHandler``)."""

    changed: asyncio.Event  # set when the retained overrides need publishing again

    def answer(self, payload: bytes, delivery: Delivery | None = None) -> Answer | None: ...
    def overrides_message(self) -> bytes: ...


def no_covers(cover_id: str) -> dict[str, Any] | None:
    return None


def batch_units(
    rows: list[Queued],
    *,
    max_count: int,
    max_bytes: int,
    encoding: TelemetryEncoding = TelemetryEncoding.JSON,
    covers: Callable[[str], dict[str, Any] | None] = no_covers,
) -> list[Unit]:
    """Alarms one per message; runs of telemetry rows joined into bounded batches.

    A batch carries the record of each cover its readings name once
    (``covers``, from the registry as it is now), not once per reading.
    ``max_bytes`` bounds the JSON before any compression.
    """
    return list(
        iter_units(rows, max_count=max_count, max_bytes=max_bytes, encoding=encoding, covers=covers)
    )


def iter_units(
    rows: list[Queued],
    *,
    max_count: int,
    max_bytes: int,
    encoding: TelemetryEncoding = TelemetryEncoding.JSON,
    covers: Callable[[str], dict[str, Any] | None] = no_covers,
) -> Iterator[Unit]:
    """``batch_units`` one unit at a time, each as soon as it is complete.

    The uplink publishes a batch while the next is still to be assembled and
    lets the event loop run between them: a round of thousands of rows never
    holds the loop (and an alarm) for the whole of its unpacking.

    A telemetry row is a chunk of readings (``Queued.n``) that fits in one
    batch (the queue cuts chunks by these limits), so batches are made of whole
    rows and a row is acknowledged with its batch. A row from a larger
    configuration (the limits lowered since) is cut into batches of its own,
    each saying how many ``parts`` the row has: it is acknowledged once all are.
    """
    batch: list[tuple[int, list[bytes]]] = []
    count = 0
    size = 0
    first_id = ""
    topic = ""

    def close_batch() -> Unit:
        return _batch_unit(encoding, covers, topic, first_id, batch, parts=0)

    for queued in rows:
        message = queued.message
        if message.lane is Lane.ALARM:
            if batch:
                yield close_batch()
                batch, count, size = [], 0, 0
            yield Unit(message.topic, message.payload, (queued.seq,))
            continue
        try:
            text = unpack_row(message.payload)
        except WireError:
            log.exception("queued reading %s is damaged; dropped", message.msg_id)
            yield Unit("", b"", (queued.seq,), count=queued.n)  # acknowledged without a publish
            continue
        readings = text.split(b"\n")  # a chunk; JSON text never holds a raw newline
        n = len(readings)
        if n > 1 and (n > max_count or len(text) > max_bytes):
            if batch:
                yield close_batch()
                batch, count, size = [], 0, 0
            yield from _cut_row(
                queued,
                readings,
                max_count=max_count,
                max_bytes=max_bytes,
                encoding=encoding,
                covers=covers,
            )
            continue
        if batch and (count + n > max_count or size + len(text) > max_bytes):
            yield close_batch()
            batch, count, size = [], 0, 0
        if not batch:
            first_id, topic = message.msg_id, message.topic
        batch.append((queued.seq, readings))
        count += n
        size += len(text) + 1
    if batch:
        yield close_batch()


def _batch_unit(
    encoding: TelemetryEncoding,
    covers: Callable[[str], dict[str, Any] | None],
    topic: str,
    first_id: str,
    batch: list[tuple[int, list[bytes]]],
    *,
    parts: int,
) -> Unit:
    """One telemetry batch of the rows' readings, each named cover's record once."""
    rows = [r for _, readings in batch for r in readings]
    records: dict[str, dict[str, Any]] = {}
    for row in rows:
        cover_id = cover_id_of(row)
        if cover_id is not None and cover_id not in records:
            record = covers(cover_id)
            if record is not None:
                records[cover_id] = record
    meta = {
        "msg_id": f"batch-{first_id}-{len(rows)}",
        "sent_at": iso(time.time()),
        "count": len(rows),
    }
    payload = encode_batch(encoding, meta, records, rows)
    seqs = tuple(seq for seq, _ in batch)
    return Unit(topic, payload, seqs, encoding, tuple(records), len(rows), parts)


def _cut_row(
    queued: Queued,
    readings: list[bytes],
    *,
    max_count: int,
    max_bytes: int,
    encoding: TelemetryEncoding,
    covers: Callable[[str], dict[str, Any] | None],
) -> Iterator[Unit]:
    """A row larger than one batch, cut by the per-reading rule; each batch one of ``parts``.

    A part's id is the row's first reading's id and the part's offset in the
    row: the same on every retry.
    """
    cuts: list[tuple[int, int]] = []
    start = 0
    while start < len(readings):
        end = start + 1
        size = len(readings[start]) + 1
        while (
            end < len(readings)
            and end - start < max_count
            and size + len(readings[end]) <= max_bytes
        ):
            size += len(readings[end]) + 1
            end += 1
        cuts.append((start, end))
        start = end
    message = queued.message
    for start, end in cuts:
        first_id = message.msg_id if start == 0 else f"{message.msg_id}.{start}"
        part = [(queued.seq, readings[start:end])]
        yield _batch_unit(encoding, covers, message.topic, first_id, part, parts=len(cuts))


def windows(max_inflight: int) -> tuple[int, int]:
    """(alarm, telemetry) in-flight slots out of ``max_inflight``.

    Alarms get slots of their own (a quarter, at least one), so a full
    telemetry window never holds one back; together they stay within
    ``max_inflight``, which is what the broker is told to expect. With
    ``max_inflight = 1`` both lanes share the one slot.
    """
    if max_inflight < 2:
        return 1, 1
    alarms = max(1, max_inflight // 4)
    return alarms, max_inflight - alarms


class _ConnectFailureLog:
    """WARNING with the reason for the first failure, a new reason, or every LOG_EVERY_S."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last_reason: str | None = None
        self._last_at = 0.0
        self._quiet = 0

    def failed(self, where: str, reason: str) -> None:
        now = self._clock()
        if reason != self._last_reason or now - self._last_at >= LOG_EVERY_S:
            more = f" ({self._quiet} more failures since the last report)" if self._quiet else ""
            log.warning("uplink to %s down: %s%s", where, reason, more)
            self._last_reason, self._last_at, self._quiet = reason, now, 0
        else:
            self._quiet += 1
            log.debug("uplink to %s down: %s", where, reason)

    def connected(self) -> None:
        self._last_reason, self._quiet = None, 0


class Uplink:
    def __init__(
        self,
        config: UplinkConfig,
        *,
        topic_root: str,
        queue: DurableQueue,
        wakeup: asyncio.Event,
        birth: Callable[[], dict[str, Any]],
        stats_payload: Callable[[], dict[str, Any]],
        stats_interval_s: float,
        on_command: CommandSink | None = None,
        covers: Callable[[str], dict[str, Any] | None] = no_covers,
        cover_records: CoverRecords | None = None,
    ) -> None:
        self.config = config
        self.cover_records = cover_records  # compact encodings: records retained, not in batches
        self.configured_protocol = config.protocol
        self.topic_root = topic_root
        self.queue = queue
        self.wakeup = wakeup
        self.birth = birth
        self.stats_payload = stats_payload
        self.stats_interval_s = stats_interval_s
        self.covers = covers  # a cover's record by id, for the batches (the registry's)
        self.stats = UplinkStats()
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self._announce = asyncio.Event()
        self._on_command = on_command
        self._address = 0  # index into config.addresses
        # Under "auto": addresses whose broker refused MQTT 5 with a CONNACK code
        # (kept), and those that only closed or timed out on it (a guess, revocable).
        self._v5_refused: set[tuple[str, int]] = set()
        self._learned: dict[tuple[str, int], MqttProtocol] = {}
        self._failures = _ConnectFailureLog()
        self._alarm_window, self._telemetry_window = windows(config.max_inflight)
        self._ready = {lane: asyncio.Event() for lane in Lane}
        self._warned: set[str] = set()  # refusal reasons already logged
        self._flight: _AlarmFlight | None = (
            None  # the alarm lane's, while it takes expedited alarms
        )

    def announce(self) -> None:
        """Publish the status again (after a reload) as soon as connected."""
        if self.cover_records is not None:
            self.cover_records.refresh()
        self._announce.set()

    @property
    def status_topic(self) -> str:
        return f"{self.topic_root}/status"

    @property
    def command_topic(self) -> str:
        return f"{self.topic_root}/cmd"

    # --- connecting ---

    def _protocol_for(self, address: tuple[str, int]) -> MqttProtocol:
        if self.configured_protocol is not MqttProtocol.AUTO:
            return self.configured_protocol
        if address in self._v5_refused:
            return MqttProtocol.V311
        return self._learned.get(address, MqttProtocol.V5)

    def _client_for(self, address: tuple[str, int], protocol: MqttProtocol) -> UplinkClient:
        c = self.config
        v5 = protocol is MqttProtocol.V5
        will = aiomqtt.Will(
            self.status_topic,
            json.dumps({"state": "offline", "reason": "connection lost", **self._ident()}),
            qos=1,
            retain=True,
        )
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = c.session_expiry_s
            properties.MaximumPacketSize = MAX_INCOMING_PACKET
        tls_context = None if c.tls is None else c.tls.context()
        client = UplinkClient(
            address[0],
            address[1],
            username=c.username,
            password=c.password,
            identifier=c.client_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            will=will,
            clean_session=None if v5 else False,
            # v5 resumes the session; v3.1.1 ignores clean_start and uses clean_session.
            clean_start=False if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            keepalive=c.keepalive_s,
            timeout=c.publish_timeout_s,
            max_inflight_messages=c.max_inflight,
            properties=properties,
            tls_context=tls_context,
            logger=logging.getLogger("gateway.uplink.mqtt"),
        )
        # aiomqtt warns past 10 pending publishes; our windows are deliberate.
        client.pending_calls_threshold = c.max_inflight + 10
        return client

    def _ident(self) -> dict[str, Any]:
        return {
            "gateway": self.birth().get("gateway"),
            "version": __version__,
            "session": self.stats.session,
        }

    def _next_session(self) -> int:
        """Count this run of the gateway; persisted, so it only ever grows."""
        try:
            session = int(self.queue.get_state(SESSION_KEY) or 0) + 1
            self.queue.put_many([], state={SESSION_KEY: str(session)})
        except (QueueError, ValueError) as err:
            log.warning("uplink: session counter not kept: %s", err)
            session = self.stats.session + 1
        return session

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, drain, reconnect, until ``stop`` is set.

        Never swallows cancellation: a cancelled uplink drops its connection
        without DISCONNECT (the broker sends the last will) and re-raises.
        """
        self.stats.session = self._next_session()
        try:
            while not stop.is_set():
                if await self._attempt(stop):
                    return
                if stop.is_set():
                    return
                self.stats.state = UplinkState.BACKOFF
                delay = self._backoff.next_delay()
                log.debug("uplink: reconnecting in %.1f s", delay)
                await _wait_any(stop, within=delay)
        finally:
            self.stats.state = UplinkState.STOPPED

    async def _attempt(self, stop: asyncio.Event) -> bool:
        """One connection, from CONNECT to its end; True once stopped cleanly."""
        addresses = self.config.addresses
        address = addresses[self._address % len(addresses)]
        protocol = self._protocol_for(address)
        where = f"{address[0]}:{address[1]}"
        self.stats.state = UplinkState.CONNECTING
        client = self._client_for(address, protocol)
        try:
            if not await self._connect(client, stop):
                return True
        except aiomqtt.MqttError as err:
            self._connect_failed(err, client, address, protocol)
            return False
        self._connected(address, protocol)
        try:
            await self._serve(client, stop)
        except aiomqtt.MqttError as err:
            client.abort()
            self._lost(where, str(err))
            return False
        except QueueError as err:
            client.abort()
            log.exception("queue failed under the uplink; reconnecting")
            self._lost(where, f"queue error: {err}")
            return False
        except BaseException:
            client.abort()  # a crash or a cancel: no DISCONNECT, so the broker sends the will
            raise
        try:
            async with asyncio.timeout(GOODBYE_S):
                await self._goodbye(client)
                await client.__aexit__(None, None, None)
        except (aiomqtt.MqttError, TimeoutError) as err:
            # The broker took too long: leave without DISCONNECT; the will says offline.
            log.warning("uplink: no clean goodbye (%s); the broker sends the last will", err)
            client.abort()
        return True

    async def _connect(self, client: UplinkClient, stop: asyncio.Event) -> bool:
        """CONNECT, given up at once when ``stop`` is set; False if stopped first."""
        entering = asyncio.ensure_future(client.__aenter__())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({entering, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not entering.done():
                entering.cancel()
                await asyncio.wait({entering}, timeout=1.0)  # its end; ours still rises
                client.abort()
        if entering.cancelled() or (stop.is_set() and entering.exception() is not None):
            return False
        entering.result()  # raises the connect error
        return True

    def _connect_failed(
        self,
        err: aiomqtt.MqttError,
        client: UplinkClient,
        address: tuple[str, int],
        protocol: MqttProtocol,
    ) -> None:
        where = f"{address[0]}:{address[1]}"
        code = getattr(err, "rc", None)
        code_value = getattr(code, "value", code)
        version_refused = isinstance(err, MqttConnectError) and code_value in (VERSION_REFUSED)
        # A broker that does not speak MQTT 5 may refuse it (0x84), close the
        # socket, or say nothing: all three, once TCP is up, mean "try 3.1.1".
        ambiguous = client.tcp_connected and (
            version_refused
            or isinstance(err, ConnectClosedError)
            or not isinstance(err, MqttConnectError)
        )
        self.stats.connect_failures += 1
        self.stats.last_error = str(err)
        if self.configured_protocol is MqttProtocol.AUTO and ambiguous:
            if protocol is MqttProtocol.V5:
                log.warning("uplink to %s: MQTT 5 not accepted (%s); trying MQTT 3.1.1", where, err)
                if version_refused:
                    # Said outright, and a cluster's nodes run the same broker: for good.
                    self._v5_refused.update(self.config.addresses)
                else:
                    self._learned[address] = MqttProtocol.V311
                self._backoff.attempt = max(0, self._backoff.attempt - 1)
                return  # the next attempt, at the same address, speaks 3.1.1
            self._learned.pop(address, None)  # a guess, and 3.1.1 failed too: try 5 again
        if version_refused:
            self._failures.failed(where, f"{err} (the broker refuses MQTT {protocol.value})")
        else:
            self._failures.failed(where, str(err))
        self._address += 1

    def _connected(self, address: tuple[str, int], protocol: MqttProtocol) -> None:
        self.stats.state = UplinkState.CONNECTED
        self.stats.connects += 1
        if self.stats.connects > 1:
            self.stats.reconnects += 1
        self.stats.last_error = None
        self.stats.protocol = protocol.value
        self.stats.broker = f"{address[0]}:{address[1]}"
        # The command intake reads config.protocol for what the connection speaks.
        self.config = replace(self.config, protocol=protocol)
        self._backoff.reset()
        self._failures.connected()
        log.info(
            "uplink connected to %s (MQTT %s, session %d, connection %d)",
            self.stats.broker,
            protocol.value,
            self.stats.session,
            self.stats.connects,
        )

    def _lost(self, where: str, reason: str) -> None:
        self.stats.last_error = reason
        log.warning("uplink to %s lost: %s", where, reason)
        self._address += 1  # a cluster: the next node may be the one still up

    async def _publish_status(self, client: UplinkClient) -> None:
        self._announce.clear()
        payload = {
            "state": "online",
            **self.birth(),
            "session": self.stats.session,
            "connection": self.stats.connects,
            "protocol": self.stats.protocol,
        }
        await self._publish_control(client, self.status_topic, json.dumps(payload), retain=True)

    async def _publish_control(
        self, client: UplinkClient, topic: str, payload: str, *, retain: bool
    ) -> None:
        """Status and stats: a refusal is counted and logged, never retried."""
        try:
            await client.publish_acked(topic, payload, qos=1, retain=retain)
        except PublishRefusedError as err:
            self._refused(err, None)

    async def _goodbye(self, client: UplinkClient) -> None:
        """A clean shutdown sends no will: say offline ourselves."""
        payload = {"state": "offline", "reason": "shutdown", **self._ident()}
        try:
            await client.publish_acked(self.status_topic, json.dumps(payload), retain=True)
        except (aiomqtt.MqttError, PublishRefusedError) as err:
            log.debug("uplink: goodbye not delivered: %s", err)

    async def _serve(self, client: UplinkClient, stop: asyncio.Event) -> None:
        # Subscribe before saying online: a platform that sends a command on
        # seeing ``online`` must find the subscription in place.
        if self._on_command is not None:
            codes = await client.subscribe_acked(self.command_topic, qos=1)
            if any(code >= 0x80 for code in codes):
                log.warning(
                    "uplink: the broker refuses our subscription to %s (0x%02X):"
                    " commands cannot reach this gateway",
                    self.command_topic,
                    max(codes),
                )
        await self._publish_status(client)
        if self._on_command is None:
            await self._drain(client, stop)
            return
        commands = asyncio.create_task(self._commands(client), name="uplink-commands")
        commands.add_done_callback(_report_command_task)
        try:
            await self._drain(client, stop)
        finally:
            await _cancel_and_wait(commands)

    async def _commands(self, client: aiomqtt.Client) -> None:
        """Answer each command, only ever under our own root; no request can end this loop.

        The answer goes to the request's MQTT 5 Response Topic (with its
        Correlation Data) when that lies under our root, else to
        ``<root>/cmd/response``. The retained overrides are published on
        every connect and after every change.
        """
        handler = self._on_command
        assert handler is not None
        fallback = f"{self.command_topic}/response"
        retained = asyncio.create_task(self._publish_overrides(client, handler), name="overrides")
        answers: asyncio.Queue[tuple[str, bytes, Properties | None]] = asyncio.Queue(ANSWER_BACKLOG)
        sender = asyncio.create_task(self._send_answers(client, answers), name="answers")
        try:
            async for message in client.messages:
                if not message.topic.matches(self.command_topic):
                    continue
                payload = message.payload if isinstance(message.payload, bytes) else b""
                request = message.properties
                reply_to = getattr(request, "ResponseTopic", None)
                foreign = reply_to if reply_to and not self._own_reply_topic(reply_to) else None
                expiry = getattr(request, "MessageExpiryInterval", None)
                delivery = Delivery(
                    expires_at=time.time() + expiry if isinstance(expiry, int) else None,
                    foreign_reply_topic=foreign,
                )
                answer = handler.answer(bytes(payload), delivery)
                if answer is None:
                    continue  # a flood past the busy answers: counted, not answered
                if foreign is not None:
                    log.warning(
                        "command answered on %s: response topic %r refused", fallback, foreign
                    )
                # An unreadable request goes to the default topic, where anyone can see why.
                topic = fallback
                if isinstance(reply_to, str) and foreign is None and not answer.unreadable:
                    topic = reply_to
                properties = None
                correlation = getattr(request, "CorrelationData", None)
                if self.config.protocol is MqttProtocol.V5:
                    properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                    if correlation is not None:
                        properties.CorrelationData = correlation
                # Published by another task: the next request is read while this answer waits
                # for its PUBACK, so a flood is counted and dropped as it arrives.
                try:
                    answers.put_nowait((topic, answer.payload, properties))
                except asyncio.QueueFull:
                    log.warning(
                        "command answer to %s dropped: %d answers unsent", topic, ANSWER_BACKLOG
                    )
                self.wakeup.set()  # audit events the command queued
                if sender.done():
                    sender.result()  # a lost connection ends the loop
        finally:
            for task in (retained, sender):
                task.cancel()
            await asyncio.gather(retained, sender, return_exceptions=True)

    def _own_reply_topic(self, topic: str) -> bool:
        """Under our root, not a filter, not the command topic itself."""
        return (
            topic.startswith(f"{self.topic_root}/")
            and not any(c in topic for c in "+#\0")
            and topic != self.command_topic
            and len(topic) <= 512
        )

    @staticmethod
    async def _send_answers(
        client: aiomqtt.Client, answers: asyncio.Queue[tuple[str, bytes, Properties | None]]
    ) -> None:
        while True:
            topic, payload, properties = await answers.get()
            await client.publish(topic, payload, qos=1, properties=properties)

    async def _publish_overrides(self, client: aiomqtt.Client, handler: CommandSink) -> None:
        while True:
            handler.changed.clear()
            await client.publish(
                f"{self.topic_root}/overrides", handler.overrides_message(), qos=1, retain=True
            )
            await handler.changed.wait()

    async def _drain(self, client: UplinkClient, stop: asyncio.Event) -> None:
        """Both lanes and the housekeeping, side by side, until ``stop``."""
        try:
            async with asyncio.TaskGroup() as lanes:
                parts = {
                    lanes.create_task(self._dispatch(stop), name="uplink-wakeups"),
                    lanes.create_task(self._alarm_lane(client, stop), name="uplink-alarms"),
                    lanes.create_task(self._telemetry_lane(client, stop), name="uplink-telemetry"),
                    lanes.create_task(self._housekeeping(client, stop), name="uplink-status"),
                }
                lanes.create_task(self._stop_grace(stop, parts), name="uplink-stop-grace")
        except* (aiomqtt.MqttError, QueueError) as errors:
            raise _leaf(errors) from None

    async def _stop_grace(self, stop: asyncio.Event, parts: set[asyncio.Task[None]]) -> None:
        """Once stopping, the last publishes get STOP_GRACE_S; a broker that hangs loses them.

        They stay in the queue (deleted only on PUBACK) for the next start.
        """
        await stop.wait()
        _, pending = await asyncio.wait(parts, timeout=STOP_GRACE_S)
        if pending:
            raise aiomqtt.MqttError(f"no PUBACK within {STOP_GRACE_S} s of stopping")

    async def _dispatch(self, stop: asyncio.Event) -> None:
        """The pipeline sets one event per commit; each lane gets its own copy."""
        for ready in self._ready.values():
            ready.set()
        while not stop.is_set():
            if await _wait_any(stop, self.wakeup):
                self.wakeup.clear()
                for ready in self._ready.values():
                    ready.set()
        for ready in self._ready.values():
            ready.set()

    async def _housekeeping(self, client: UplinkClient, stop: asyncio.Event) -> None:
        next_stats = time.monotonic()
        while not stop.is_set():
            _checkpoint()
            if self.cover_records is not None:
                await self.cover_records.flush(client)
            if self._announce.is_set():
                await self._publish_status(client)
            if time.monotonic() >= next_stats:
                await self._publish_stats(client)
                next_stats = time.monotonic() + self.stats_interval_s
            await _wait_any(stop, self._announce, within=next_stats - time.monotonic())

    async def _publish_stats(self, client: UplinkClient) -> None:
        payload = self.stats_payload()
        await self._publish_control(
            client, f"{self.topic_root}/stats", json.dumps(payload), retain=True
        )

    def _marked(self, unit: Unit) -> Properties | None:
        """MQTT 5: a telemetry batch names its encoding (content type and a user property)."""
        if unit.encoding is None or self.config.protocol is not MqttProtocol.V5:
            return None
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ContentType = CONTENT_TYPES[unit.encoding]
        properties.UserProperty = [("encoding", unit.encoding.value)]
        return properties

    def expedite(self, alarms: Sequence[Outgoing], committed: asyncio.Future[bool]) -> bool:
        """Publish alarms now, while the pipeline commits them; False: left to the queue.

        The short path of the alarm lane: the PUBLISH travels while the commit
        runs on the writer thread, so an alarm takes the longer of its fsync
        and the broker's round trip, not their sum. A row is deleted only once
        its PUBACK is in and ``committed`` (set by the committer) says it is on
        disk; if the commit fails the message is published again from the
        queue once it is written, under the same id. Taken only while the lane
        is caught up (nothing of its own older unsent) and has free slots, so
        alarms still leave in queue order.
        """
        flight = self._flight
        if flight is None or not flight.take(alarms, committed):
            if flight is not None:
                flight.missed += 1  # left to the queue: later ones must not overtake it
                flight.caught_up = False
            return False
        return True

    async def _alarm_lane(self, client: UplinkClient, stop: asyncio.Event) -> None:
        """Each alarm published as soon as it is in the queue, on slots of its own.

        Alarms are not taken in rounds: a new one is read and published while
        earlier ones still await their PUBACK, and each is deleted on its own.
        While the lane is caught up, ``expedite`` publishes new ones before
        they even reach the queue.
        """
        ready = self._ready[Lane.ALARM]
        backoff = Backoff(self.config.reconnect_min_s, self.config.reconnect_max_s)
        last = 0
        async with asyncio.TaskGroup() as sends:
            flight = _AlarmFlight(self, client, sends, ready)
            try:
                while True:
                    _checkpoint()
                    finishing = stop.is_set()
                    if finishing:
                        self._flight = None
                    ready.clear()
                    if flight.refused and not flight.busy:
                        # Refused rows stay queued; look at them again after a pause.
                        flight.refused = False
                        await _wait_any(stop, within=backoff.next_delay())
                        last = 0
                        continue
                    missed, mark = flight.missed, flight.stamp
                    rows = await self.queue.peek_lane_async(Lane.ALARM, ALARM_ROUND, after=last)
                    flight.forget_deleted(mark)
                    for row in rows:
                        last = row.seq
                        if row.seq in flight.seqs or row.message.msg_id in flight.early:
                            continue
                        await flight.acquire()
                        flight.seqs.add(row.seq)
                        sends.create_task(flight.send(row))
                    if rows and not flight.refused:
                        backoff.reset()
                    if finishing:
                        return  # what was in the queue has been sent; the group awaits the acks
                    # Caught up: nothing unsent was left behind this look, and no
                    # alarm went to the queue (instead of the short path) since it began.
                    flight.caught_up = (
                        len(rows) < ALARM_ROUND and not flight.refused and flight.missed == missed
                    )
                    self._flight = None if stop.is_set() else flight
                    if not rows:
                        await _wait_any(stop, ready)
            finally:
                self._flight = None

    async def _telemetry_lane(self, client: UplinkClient, stop: asyncio.Event) -> None:
        """Rounds of batches, oldest first; a round is deleted when its PUBACKs are in."""
        ready = self._ready[Lane.TELEMETRY]
        backoff = Backoff(self.config.reconnect_min_s, self.config.reconnect_max_s)
        while True:
            _checkpoint()
            finishing = stop.is_set()
            ready.clear()
            started = time.monotonic()
            sent, refused = await self._telemetry_round(client)
            if finishing:
                return  # what is already queued had its chance before exit
            if refused:
                await _wait_any(stop, within=backoff.next_delay())
            elif sent:
                backoff.reset()
                await self._pace(stop, sent, started)
            else:
                await _wait_any(stop, ready)

    async def _pace(self, stop: asyncio.Event, sent: int, started: float) -> None:
        """A backlog drains no faster than ``[uplink] drain_max_rate`` readings/s.

        The broker acknowledges a batch once it has it, not once the platform
        has: a platform taking every topic on one session reads an alarm behind
        all the telemetry the broker holds for it. Unpaced, a backlog drains at
        ~170k readings/s on the 2-core test machine, which overran the bench's
        platform subscriber (alarm p99 23-86 ms there, 1.3-5.9 ms at a
        subscriber taking alarms alone); at 100k/s it keeps up (3-9 ms). Live
        traffic never comes near it.
        """
        rate = self.config.drain_max_rate
        if rate:
            spare = sent / rate - (time.monotonic() - started)
            if spare > 0:
                await _wait_any(stop, within=spare)

    async def _telemetry_round(self, client: UplinkClient) -> tuple[int, bool]:
        """One round; (readings delivered, whether the broker refused any)."""
        rows: list[Queued] = []
        taken = 0  # readings: a row holds a chunk of them
        while taken < ROUND_ROWS:  # on the writer thread, in slices: see PEEK_ROWS
            after = rows[-1].seq if rows else 0
            part = await self.queue.peek_lane_async(Lane.TELEMETRY, PEEK_ROWS, after=after)
            rows += part
            readings = sum(q.n for q in part)
            taken += readings
            if readings < PEEK_ROWS:
                break
        if not rows:
            return 0, False
        units = iter_units(
            rows,
            max_count=self.config.telemetry_batch_max,
            max_bytes=self.config.telemetry_batch_bytes,
            encoding=self.config.telemetry_encoding,
            covers=self.covers,
        )
        window = _Window(self._telemetry_window, TELEMETRY_INFLIGHT_BYTES)
        acked: list[int] = []
        refused: list[PublishRefusedError] = []
        # A row cut into several batches (``parts``) goes once all of them are in.
        parts_in: Counter[int] = Counter()
        delivered = 0

        async def send(unit: Unit) -> None:
            nonlocal delivered
            try:
                if unit.topic:  # an empty topic: a damaged row, acknowledged unsent
                    try:
                        await client.publish_acked(
                            unit.topic, unit.payload, properties=self._marked(unit)
                        )
                    except PublishRefusedError as err:
                        refused.append(err)
                        return
                if unit.parts:
                    (seq,) = unit.seqs
                    parts_in[seq] += 1
                    if parts_in[seq] == unit.parts:
                        acked.append(seq)
                else:
                    acked.extend(unit.seqs)
                delivered += unit.count
                self._delivered(Lane.TELEMETRY, unit.count)
            finally:
                window.give(len(unit.payload))

        try:
            async with asyncio.TaskGroup() as group:
                for unit in units:
                    # In order, one batch assembled at a time: between two, the loop
                    # serves whatever waits (an alarm's frame, publish, PUBACK).
                    if self.cover_records is not None and unit.covers:
                        # A compact batch's covers have their records out first.
                        await self.cover_records.ensure(client, unit.covers)
                    await window.take(len(unit.payload))
                    group.create_task(send(unit))
                    await asyncio.sleep(0)
        except* aiomqtt.MqttError as errors:
            await self.queue.ack_async(acked)
            raise _leaf(errors) from None
        await self.queue.ack_async(acked)
        for err in refused:
            self._refused(err, Lane.TELEMETRY)
        return delivered, bool(refused)

    # --- counting ---

    def _delivered(self, lane: Lane, rows: int) -> None:
        self.stats.published_messages += 1
        self.stats.published_rows += rows
        if self.stats.refusing is not None and self._refusing_lane in (lane, None):
            log.info("uplink: the broker accepts %s again", lane.name.lower())
            self.stats.refusing = None

    _refusing_lane: Lane | None = None

    def _refused(self, err: PublishRefusedError, lane: Lane | None) -> None:
        """Counted per reason, logged once per reason; the rows stay in the queue."""
        self.stats.refused[err.reason] += 1
        if lane is not None:
            self.stats.refusing = err.reason
            self._refusing_lane = lane
        if err.reason not in self._warned:
            self._warned.add(err.reason)
            what = lane.name.lower() if lane is not None else "status"
            log.warning(
                "uplink: the broker refuses our %s: %s (0x%02X); kept in the queue, retried",
                what,
                err.reason,
                err.code,
            )


class _Window:
    """Publishes in flight, bounded by count and by bytes; one always goes, however large.

    Taken by one task, in order; given back by the publishes as their PUBACKs come.
    """

    def __init__(self, count: int, size: int) -> None:
        self.max_count, self.max_bytes = count, size
        self.count = self.bytes = 0
        self._freed = asyncio.Event()

    async def take(self, size: int) -> None:
        while self.count and (self.count >= self.max_count or self.bytes + size > self.max_bytes):
            self._freed.clear()
            await self._freed.wait()
        self.count += 1
        self.bytes += size

    def give(self, size: int) -> None:
        self.count -= 1
        self.bytes -= size
        self._freed.set()


class _AlarmFlight:
    """The alarm lane's publishes in flight, by its queue path and by its short path.

    ``early`` holds the ids of alarms published by ``Uplink.expedite``: None
    while in flight, then the stamp of their delete. A peek submitted after
    that delete cannot see the row, so the id is forgotten then; until then
    the lane skips the row, which it would otherwise publish twice.
    """

    def __init__(
        self, uplink: Uplink, client: UplinkClient, group: asyncio.TaskGroup, ready: asyncio.Event
    ) -> None:
        self.uplink = uplink
        self.window = uplink._alarm_window
        self.client = client
        self.group = group
        self.ready = ready  # set to make the lane look at the queue again
        self.seqs: set[int] = set()  # queue rows in flight
        self.early: dict[str, int | None] = {}
        self.busy = 0  # slots taken, both paths
        self.refused = False  # a refusal since the lane last paused for one
        self.caught_up = False
        self.missed = 0  # alarms committed without the short path (counted by ``expedite``)
        self.stamp = 0  # deletes of early alarms so far
        self._free = asyncio.Event()
        self._free.set()

    def take(self, alarms: Sequence[Outgoing], committed: asyncio.Future[bool]) -> bool:
        """Publish ``alarms`` now if the lane is caught up and has the slots; else False."""
        if not self.caught_up or self.busy + len(alarms) > self.window:
            return False
        for message in alarms:
            try:
                info = self.client.publish_now(message.topic, message.payload)
            except aiomqtt.MqttError:
                return False  # the connection is going: the queue path after the reconnect
            early = self.send_early(message.msg_id, info, committed)
            try:
                self.group.create_task(early)
            except RuntimeError:  # the lane is shutting down after an error
                early.close()
                return False
            self.early[message.msg_id] = None
            self.busy += 1
        return True

    async def acquire(self) -> None:
        while self.busy >= self.window:
            self._free.clear()
            await self._free.wait()
        self.busy += 1

    def release(self) -> None:
        self.busy -= 1
        self._free.set()

    def forget_deleted(self, before: int) -> None:
        """After a peek submitted at stamp ``before``: rows deleted by then were not in it."""
        done = [m for m, at in self.early.items() if at is not None and at <= before]
        for msg_id in done:
            del self.early[msg_id]

    async def send(self, row: Queued) -> None:
        """A row from the queue: published, deleted on its PUBACK."""
        try:
            await self.client.acked(self.client.publish_now(row.message.topic, row.message.payload))
        except PublishRefusedError as err:
            self._refused(err)
        else:
            await self.uplink.queue.ack_async([row.seq], urgent=True)
            self.uplink._delivered(Lane.ALARM, 1)
        finally:
            self.seqs.discard(row.seq)
            self.release()

    async def send_early(
        self, msg_id: str, info: mqtt.MQTTMessageInfo, committed: asyncio.Future[bool]
    ) -> None:
        """An expedited alarm: deleted once both its PUBACK and its commit are in."""
        try:
            await self.client.acked(info)
        except PublishRefusedError as err:
            self.early.pop(msg_id, None)  # the queue's copy is published again
            self._refused(err)
            return
        finally:
            self.release()
        if not await asyncio.shield(committed):
            # Not on disk: the pipeline keeps it and commits it later; the lane
            # then finds it in the queue and publishes it again (same msg_id).
            self.early.pop(msg_id, None)
            return
        await self.uplink.queue.ack_ids_async([msg_id], urgent=True)
        self.stamp += 1
        self.early[msg_id] = self.stamp
        self.uplink._delivered(Lane.ALARM, 1)

    def _refused(self, err: PublishRefusedError) -> None:
        self.uplink._refused(err, Lane.ALARM)
        self.refused = True
        self.caught_up = False
        self.ready.set()  # the lane schedules the retry


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` until it ends: 3.11's ``wait_for`` (in aiomqtt) can swallow one cancel.

    Waits with ``asyncio.wait``, so a cancel of the caller still rises.
    """
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.5)


def _leaf(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first real error in a (nested) exception group: task groups nest here."""
    first = group.exceptions[0]
    return _leaf(first) if isinstance(first, BaseExceptionGroup) else first


def _checkpoint() -> None:
    """Raise a cancellation that something below us swallowed (see ``_cancel_and_wait``)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _wait_any(
    stop: asyncio.Event, *events: asyncio.Event, within: float | None = None
) -> bool:
    """Until ``stop`` or any of ``events`` is set, or ``within`` seconds; True if an event fired.

    Built on ``asyncio.wait``, which never swallows a cancellation of the caller.
    """
    waiters = {asyncio.ensure_future(e.wait()) for e in (stop, *events)}
    try:
        await asyncio.wait(
            waiters,
            timeout=None if within is None else max(0.0, within),
            return_when=asyncio.FIRST_COMPLETED,
        )
    finally:
        for waiter in waiters:
            waiter.cancel()
    return any(e.is_set() for e in events)
