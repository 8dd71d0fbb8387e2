"""The MQTT uplink: drains the durable queue to the broker, QoS 1, and nothing else.

A message leaves the queue only when the broker has acknowledged it (PUBACK);
until then it is published again after every reconnect, under the same id.
Alarms go one per message, ahead of any backlog; telemetry rows go in
batches bounded by count and bytes. The connection is an explicit state
machine with capped, jittered exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway import __version__
from gateway.backoff import Backoff, sleep_or_stop
from gateway.buffer.queue import DurableQueue, Lane, Queued, QueueError
from gateway.commands import Answer, Delivery
from gateway.config import MqttProtocol, UplinkConfig
from gateway.edge.engine import iso
from gateway.wire import (
    CONTENT_TYPES,
    TelemetryEncoding,
    WireError,
    cover_id_of,
    encode_batch,
    unpack_row,
)

log = logging.getLogger(__name__)

ROUND_ROWS = 2000  # rows taken from the queue per publishing round


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


@dataclass(frozen=True)
class Unit:
    """One MQTT message and the queue rows it carries."""

    topic: str  # empty: nothing to publish, only rows to acknowledge (a damaged row)
    payload: bytes
    seqs: tuple[int, ...]
    encoding: TelemetryEncoding | None = None  # a telemetry batch's; None for everything else


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
    units: list[Unit] = []
    batch: list[tuple[int, bytes]] = []
    size = 0
    first_id = ""

    def close_batch() -> None:
        nonlocal batch, size
        if not batch:
            return
        records: dict[str, dict[str, Any]] = {}
        for _, row in batch:
            cover_id = cover_id_of(row)
            if cover_id is not None and cover_id not in records:
                record = covers(cover_id)
                if record is not None:
                    records[cover_id] = record
        meta = {
            "msg_id": f"batch-{first_id}-{len(batch)}",
            "sent_at": iso(time.time()),
            "count": len(batch),
        }
        payload = encode_batch(encoding, meta, records, [row for _, row in batch])
        units.append(Unit(topic, payload, tuple(seq for seq, _ in batch), encoding))
        batch, size = [], 0

    topic = ""
    for queued in rows:
        message = queued.message
        if message.lane is Lane.ALARM:
            close_batch()
            units.append(Unit(message.topic, message.payload, (queued.seq,)))
            continue
        try:
            row = unpack_row(message.payload)
        except WireError:
            log.exception("queued reading %s is damaged; dropped", message.msg_id)
            units.append(Unit("", b"", (queued.seq,)))  # acknowledged without a publish
            continue
        if batch and (len(batch) >= max_count or size + len(row) > max_bytes):
            close_batch()
        if not batch:
            first_id, topic = message.msg_id, message.topic
        batch.append((queued.seq, row))
        size += len(row) + 1
    close_batch()
    return units


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
    ) -> None:
        self.config = config
        self.topic_root = topic_root
        self.queue = queue
        self.wakeup = wakeup
        self.birth = birth
        self.stats_payload = stats_payload
        self.stats_interval_s = stats_interval_s
        self.covers = covers  # a cover's record by id, for the batches (the registry's)
        self.stats = UplinkStats()
        self._backoff = Backoff(config.reconnect_min_s, config.reconnect_max_s)
        self._announce = False
        self._on_command = on_command

    def announce(self) -> None:
        """Publish the status again (after a reload) as soon as connected."""
        self._announce = True
        self.wakeup.set()

    @property
    def status_topic(self) -> str:
        return f"{self.topic_root}/status"

    @property
    def command_topic(self) -> str:
        return f"{self.topic_root}/cmd"

    def _client_for(self) -> aiomqtt.Client:
        c = self.config
        v5 = c.protocol is MqttProtocol.V5
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
        tls_context = None
        if c.tls is not None:
            tls_context = ssl.create_default_context(cafile=str(c.tls.ca_file))
            if c.tls.cert_file is not None and c.tls.key_file is not None:
                tls_context.load_cert_chain(str(c.tls.cert_file), str(c.tls.key_file))
        client = aiomqtt.Client(
            c.host,
            c.port,
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
        # aiomqtt warns past 10 pending publishes; our window is deliberate.
        client.pending_calls_threshold = c.max_inflight + 2
        return client

    def _ident(self) -> dict[str, Any]:
        return {"gateway": self.birth().get("gateway"), "version": __version__}

    async def run(self, stop: asyncio.Event) -> None:
        """Connect, drain, reconnect, until ``stop`` is set."""
        while not stop.is_set():
            self.stats.state = UplinkState.CONNECTING
            try:
                async with self._client_for() as client:
                    await self._on_connected(client)
                    await self._serve(client, stop)
                    await self._goodbye(client)
                    break
            except aiomqtt.MqttError as err:
                self._on_failure(err)
            except QueueError:
                log.exception("queue failed under the uplink; retrying")
                self._on_failure(None)
            if stop.is_set():
                break
            self.stats.state = UplinkState.BACKOFF
            delay = self._backoff.next_delay()
            log.debug("uplink: reconnecting in %.1f s", delay)
            await sleep_or_stop(stop, delay)
        self.stats.state = UplinkState.STOPPED

    def _on_failure(self, err: Exception | None) -> None:
        text = str(err) if err else "queue error"
        first = self.stats.last_error is None or self.stats.state is UplinkState.CONNECTED
        level = logging.WARNING if first else logging.DEBUG
        log.log(level, "uplink to %s:%d down: %s", self.config.host, self.config.port, text)
        self.stats.last_error = text

    async def _on_connected(self, client: aiomqtt.Client) -> None:
        self.stats.state = UplinkState.CONNECTED
        self.stats.connects += 1
        if self.stats.connects > 1:
            self.stats.reconnects += 1
        self.stats.last_error = None
        self._backoff.reset()
        log.info("uplink connected to %s:%d", self.config.host, self.config.port)
        await self._publish_status(client)

    async def _publish_status(self, client: aiomqtt.Client) -> None:
        self._announce = False
        payload = {"state": "online", **self.birth()}
        await client.publish(self.status_topic, json.dumps(payload), qos=1, retain=True)

    async def _goodbye(self, client: aiomqtt.Client) -> None:
        """A clean shutdown sends no will: say offline ourselves."""
        payload = {"state": "offline", "reason": "shutdown", **self._ident()}
        try:
            await client.publish(self.status_topic, json.dumps(payload), qos=1, retain=True)
        except aiomqtt.MqttError as err:
            log.debug("uplink: goodbye not delivered: %s", err)

    async def _serve(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        if self._on_command is None:
            await self._drain(client, stop)
            return
        await client.subscribe(self.command_topic, qos=1)
        commands = asyncio.create_task(self._commands(client), name="uplink-commands")
        commands.add_done_callback(_report_command_task)
        try:
            await self._drain(client, stop)
        finally:
            commands.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await commands

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

    async def _drain(self, client: aiomqtt.Client, stop: asyncio.Event) -> None:
        next_stats = time.monotonic()
        while not stop.is_set():
            if self._announce:
                await self._publish_status(client)
            if time.monotonic() >= next_stats:
                await self._publish_stats(client)
                next_stats = time.monotonic() + self.stats_interval_s
            sent = await self._drain_round(client)
            if sent:
                continue
            self.wakeup.clear()
            timeout = max(0.0, min(1.0, next_stats - time.monotonic()))
            waiter = asyncio.ensure_future(self.wakeup.wait())
            stopper = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait(
                    {waiter, stopper}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                waiter.cancel()
                stopper.cancel()
        await self._drain_round(client)  # what is already queued gets its chance before exit

    async def _publish_stats(self, client: aiomqtt.Client) -> None:
        payload = self.stats_payload()
        await client.publish(f"{self.topic_root}/stats", json.dumps(payload), qos=1, retain=True)

    def _marked(self, unit: Unit) -> Properties | None:
        """MQTT 5: a telemetry batch names its encoding (content type and a user property)."""
        if unit.encoding is None or self.config.protocol is not MqttProtocol.V5:
            return None
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.ContentType = CONTENT_TYPES[unit.encoding]
        properties.UserProperty = [("encoding", unit.encoding.value)]
        return properties

    async def _drain_round(self, client: aiomqtt.Client) -> int:
        rows = await self.queue.peek_async(ROUND_ROWS)  # off the loop: the writer thread
        if not rows:
            return 0
        units = batch_units(
            rows,
            max_count=self.config.telemetry_batch_max,
            max_bytes=self.config.telemetry_batch_bytes,
            encoding=self.config.telemetry_encoding,
            covers=self.covers,
        )
        window = asyncio.Semaphore(self.config.max_inflight)
        acked: list[int] = []

        async def send(unit: Unit) -> None:
            async with window:
                if unit.topic:
                    await client.publish(
                        unit.topic, unit.payload, qos=1, properties=self._marked(unit)
                    )
                acked.extend(unit.seqs)
                self.stats.published_messages += 1
                self.stats.published_rows += len(unit.seqs)

        try:
            async with asyncio.TaskGroup() as group:
                for unit in units:
                    group.create_task(send(unit))
        except* aiomqtt.MqttError as errors:
            await self.queue.ack_async(acked)
            raise errors.exceptions[0] from None
        await self.queue.ack_async(acked)
        return len(acked)
