"""aiomqtt's client with the three things the uplink needs and aiomqtt 2.5 leaves out.

- A PUBACK carrying a reason code ≥ 0x80 (MQTT 5: "not authorized", "quota
  exceeded" …) is a refusal, not a delivery: aiomqtt resolves ``publish`` on
  any PUBACK, so :meth:`UplinkClient.publish_acked` reads the code paho hands
  to ``on_publish`` and raises :class:`PublishRefusedError`.
- :meth:`UplinkClient.abort` drops the connection without DISCONNECT, so the
  broker sends the last will; aiomqtt's ``__aexit__`` always disconnects
  cleanly, which makes a crash look like an orderly goodbye.
- A connection the broker closes while CONNECT is pending fails at once with
  :class:`ConnectClosedError` instead of waiting for the CONNACK timeout; that is
  how some brokers (RabbitMQ 3.10) answer an MQTT version they do not speak.
- paho's housekeeping (a PINGREQ when the keepalive falls due, the connection
  dropped when its PINGRESP is overdue) runs when it next has something to do,
  not every second as aiomqtt runs it: an idle gateway sleeps.
- :meth:`UplinkClient.publish_now` writes an alarm to the socket at once, and a
  writer is added to the loop only while paho still has bytes to write.
- Without TLS, paho's socket reads and writes do not name ``ssl``
  (:func:`plain_socket_io`), so OpenSSL is never loaded.

Only private members of aiomqtt 2.5 (pinned in pyproject.toml) are used here,
so the rest of the gateway sees the public API plus these three.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway.errors import GatewayError

T = TypeVar("T")

MISC_MIN_S = 0.01  # paho's keepalive housekeeping: never sooner than this after the last
MISC_MAX_S = 60.0  # ...nor later than this (a keepalive of 0 means nothing to do)

# CONNACK codes that mean "not this protocol version": 3.1.1's 0x01 and MQTT 5's 0x84.
VERSION_REFUSED = frozenset({1, 0x84})


class UplinkError(GatewayError):
    """The uplink's own failures (as opposed to aiomqtt's connection errors)."""


class PublishRefusedError(UplinkError):
    """The broker answered a publish with a failure reason code; the message is not delivered."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"refused by the broker: {reason} (0x{code:02X})")
        self.code = code
        self.reason = reason


class ConnectClosedError(aiomqtt.MqttError):
    """The broker closed the connection before answering CONNECT."""


class UplinkClient(aiomqtt.Client):
    """See the module docstring; everything else is aiomqtt's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Refusals by message id, taken by the publish waiting on that id.
        self._refusals: dict[int, ReasonCode] = {}
        self.tcp_connected = False  # did the socket open? (tells a refused version from no route)
        # The CONNACK's flag: the broker kept this client's session (and, with it, its state).
        self.session_present = False
        plain_socket_io(self._client)

    # --- paho callbacks ---

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        if reason_code.is_failure:
            self._refusals[mid] = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        self.session_present = bool(flags.session_present)
        super()._on_connect(client, userdata, flags, reason_code, properties)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self.tcp_connected = True
        super()._on_socket_open(client, userdata, sock)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None = None,
    ) -> None:
        if not self._connected.done():
            # Called from paho inside the loop's reader callback: safe to resolve here.
            closed = ConnectClosedError(f"closed during CONNECT: {reason_code}")
            self._connected.set_exception(closed)
            return
        super()._on_disconnect(client, userdata, flags, reason_code, properties)

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        """aiomqtt's, but the writer is added only if there is still something to write.

        paho asks for a writer whenever it queues a packet, and aiomqtt adds it
        on the loop's next turn. ``publish_now`` has written the packet by then,
        and the socket may even be closed (a goodbye right after an alarm):
        adding a writer to a closed descriptor logged an asyncio traceback.
        """
        fileno = sock.fileno()

        def write() -> None:
            try:
                client.loop_write()
            except Exception as exc:  # a broken pipe: the connection is gone
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def register() -> None:
            if sock.fileno() == fileno != -1 and client.want_write():
                self._loop.add_writer(fileno, write)

        self._loop.call_soon_threadsafe(register)

    async def _misc_loop(self) -> None:
        """aiomqtt's loop calls ``loop_misc`` every second; it only acts at keepalive deadlines."""
        while self._client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:  # noqa: ASYNC110 - a timer, no event
            await asyncio.sleep(misc_due_in(self._client, time.monotonic()))

    # --- what the uplink calls ---

    async def publish_acked(
        self,
        topic: str,
        payload: bytes | str,
        *,
        qos: int = 1,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Publish and wait for the PUBACK; raise :class:`PublishRefusedError` on a failure code."""
        await self.acked(self._publish(topic, payload, qos, retain, properties))

    def publish_now(self, topic: str, payload: bytes | str) -> mqtt.MQTTMessageInfo:
        """QoS 1, written to the socket at once; :meth:`acked` waits for the PUBACK.

        For alarms: the caller does something else (commits it to disk) while
        the packet travels, and the write does not wait for the loop's next
        turn (behind whatever is ready to run) as aiomqtt's would.
        """
        info = self._publish(topic, payload, 1, False, None)
        rc = self._client.loop_write()
        if rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_AGAIN):
            raise aiomqtt.MqttCodeError(rc, "Could not write the message")
        return info

    def _publish(
        self,
        topic: str,
        payload: bytes | str,
        qos: int,
        retain: bool,
        properties: Properties | None,
    ) -> mqtt.MQTTMessageInfo:
        info = self._client.publish(topic, payload, qos, retain, properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "Could not publish message")
        return info

    async def acked(self, info: mqtt.MQTTMessageInfo) -> None:
        """Until the PUBACK of a publish.

        A failure code in it raises :class:`PublishRefusedError`.
        """
        try:
            if not info.is_published():
                confirmation = asyncio.Event()
                with self._pending_call(info.mid, confirmation, self._pending_publishes):
                    await self._within_timeout(confirmation.wait())
        finally:
            refusal = self._refusals.pop(info.mid, None)
        if refusal is not None:
            raise PublishRefusedError(refusal.value, str(refusal).lower())

    async def subscribe_acked(self, topic: str, qos: int = 1) -> list[int]:
        """Subscribe and wait for the SUBACK; its codes (≥ 0x80: refused) per topic."""
        result, mid = self._client.subscribe(topic, qos)
        if result != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise aiomqtt.MqttCodeError(result, "Could not subscribe to topic")
        granted: asyncio.Future[tuple[int, ...] | list[ReasonCode]] = asyncio.Future()
        with self._pending_call(mid, granted, self._pending_subscribes):
            codes = await self._within_timeout(granted)
        return [c.value if isinstance(c, ReasonCode) else int(c) for c in codes]

    async def _within_timeout(self, awaitable: Awaitable[T]) -> T:
        """aiomqtt's ``_wait_for`` uses 3.11's ``asyncio.wait_for``, which can swallow
        a cancellation that lands as the awaited result arrives; ``asyncio.timeout``
        cannot, and a swallowed cancel would hang the daemon's shutdown."""
        try:
            async with asyncio.timeout(self.timeout):
                return await awaitable
        except TimeoutError:
            raise aiomqtt.MqttError("Operation timed out") from None

    def abort(self) -> None:
        """Close the socket without DISCONNECT: the broker publishes our last will.

        Not while ``__aenter__`` runs. The client is done afterwards: make a new one.
        """
        self._client._sock_close()
        if not self._disconnected.done():
            self._disconnected.set_result(None)  # ends whoever iterates ``messages``


def plain_socket_io(client: mqtt.Client) -> None:
    """paho's socket read and write, minus the ``except ssl.…`` a plain socket never needs.

    paho catches ``ssl.SSLWantReadError`` around every ``recv`` and ``send``,
    and reads until a read would block whenever more than one PUBACK is owed,
    so any burst of publishes evaluates ``ssl.SSLWantReadError``. ``ssl`` is a
    placeholder in the daemon until TLS is used (gateway/__init__.py), and that
    lookup imported it: OpenSSL, ~4 MiB, in a gateway without TLS. A
    connection with TLS (paho's ``_ssl``, set by ``tls_set_context``) still
    goes through paho's own methods.
    """
    tls_recv, tls_send = client._sock_recv, client._sock_send

    def plain() -> Any:
        """The connection's socket, as paho's own methods find it."""
        if client._sock is None:
            raise ConnectionError("self._sock is None")
        return client._sock

    def recv(bufsize: int) -> bytes:
        if client._ssl:
            return tls_recv(bufsize)
        return plain().recv(bufsize)  # type: ignore[no-any-return]

    def send(buf: bytes | bytearray) -> int:
        if client._ssl:
            return tls_send(buf)
        try:
            return plain().send(buf)  # type: ignore[no-any-return]
        except BlockingIOError:
            client._call_socket_register_write()
            raise

    client._sock_recv = recv  # type: ignore[method-assign]
    client._sock_send = send  # type: ignore[method-assign]


def misc_due_in(client: mqtt.Client, now: float) -> float:
    """Seconds until paho's ``loop_misc`` can next act: a keepalive or a PINGRESP falls due.

    paho keeps these times on ``time.monotonic``. Unknown attributes (another
    paho) fall back to aiomqtt's one second.
    """
    keepalive = client.keepalive
    out = getattr(client, "_last_msg_out", None)
    heard = getattr(client, "_last_bytes_received", None)
    ping = getattr(client, "_ping_t", None)
    if not (
        isinstance(out, int | float)
        and isinstance(heard, int | float)
        and isinstance(ping, int | float)
    ):
        return 1.0
    if keepalive <= 0:
        return MISC_MAX_S
    due = min(out, heard) + keepalive
    if ping:
        due = min(due, ping + keepalive)
    return min(MISC_MAX_S, max(MISC_MIN_S, due - now + MISC_MIN_S))
