"""Prometheus metrics on localhost (off by default): the counters of the stats message.

The exporter never asks the gateway anything: the pipeline hands it a fresh
stats snapshot every tick and a scrape renders whatever snapshot is newest.
It is served from the event loop by a deliberately small HTTP/1.0 responder
(``GET /metrics`` only), so it lives under the daemon's supervision and its
resources are bounded: at most ``max_clients`` connections at once (more are
closed at once and counted), a request head of at most ``MAX_HEAD`` bytes
that must arrive within ``READ_TIMEOUT_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from gateway.errors import TransportError

log = logging.getLogger(__name__)

MAX_HEAD = 8192  # bytes of request line and headers
READ_TIMEOUT_S = 5.0
MAX_CLIENTS = 8  # ``[metrics] max_clients``


class StatsCollector(Collector):
    def __init__(self) -> None:
        self.snapshot: dict[str, Any] = {}

    def collect(self) -> Iterator[Metric]:
        stats = self.snapshot  # one reference, swapped whole by the loop's thread
        if not stats:
            return
        ports = stats["ports"]
        frames = CounterMetricFamily("covergw_frames", "Frames received", labels=["port"])
        rejected = CounterMetricFamily(
            "covergw_rejected_frames", "Frame candidates rejected", labels=["port", "reason"]
        )
        skipped = CounterMetricFamily(
            "covergw_skipped_bytes", "Bytes skipped while resyncing", labels=["port"]
        )
        up = GaugeMetricFamily(
            "covergw_port_up", "1 while the port is open", labels=["port", "kind"]
        )
        slave_failures = CounterMetricFamily(
            "covergw_modbus_failures", "Failed Modbus transactions", labels=["bus", "slave"]
        )
        for name, port in ports.items():
            up.add_metric([name, port["kind"]], 1.0 if port["state"] == "open" else 0.0)
            if "frames" in port:
                frames.add_metric([name], port["frames"])
                skipped.add_metric([name], port["skipped_bytes"])
                for key, value in port.items():
                    if key.startswith("rejected_"):
                        rejected.add_metric([name, key.removeprefix("rejected_")], value)
            for address, slave in port.get("slaves", {}).items():
                slave_failures.add_metric([name, address], slave["failures"])
        yield from (frames, rejected, skipped, up, slave_failures)
        yield from _ingress_and_supervision(stats)

        edge = stats["edge"]
        for key, help_text in (
            ("duplicates", "Duplicate frames dropped"),
            ("lost_frames", "Frames missing by sequence gap"),
            ("unregistered_frames", "Frames from nodes not in the registry"),
            ("shed_telemetry", "Readings shed under input overload"),
        ):
            yield CounterMetricFamily(f"covergw_{key}", help_text, value=edge[key])
        yield GaugeMetricFamily(
            "covergw_active_alarms", "Alarms active now", value=edge["active_alarms"]
        )

        q = stats["queue"]
        depth = GaugeMetricFamily(
            "covergw_queue_depth", "Messages waiting in the queue", labels=["lane"]
        )
        evicted = CounterMetricFamily(
            "covergw_queue_evicted", "Messages evicted from a full queue", labels=["lane"]
        )
        for lane in ("alarm", "telemetry"):
            depth.add_metric([lane], q[f"depth_{lane}"])
            evicted.add_metric([lane], q[f"evicted_{lane}"])
        yield from (depth, evicted)
        yield GaugeMetricFamily("covergw_queue_bytes", "Bytes of payload queued", value=q["bytes"])
        yield GaugeMetricFamily(
            "covergw_queue_oldest_age_seconds",
            "Age of the oldest queued message",
            value=q["oldest_age_s"] or 0.0,
        )
        yield CounterMetricFamily(
            "covergw_queue_write_errors", "Failed queue commits", value=q["write_errors"]
        )

        u = stats["uplink"]
        yield GaugeMetricFamily(
            "covergw_uplink_connected", "1 while connected", value=u["state"] == "connected"
        )
        yield CounterMetricFamily(
            "covergw_uplink_reconnects", "Reconnections to the broker", value=u["reconnects"]
        )
        yield CounterMetricFamily(
            "covergw_published_messages",
            "MQTT messages acknowledged",
            value=u["published_messages"],
        )
        yield GaugeMetricFamily(
            "covergw_uptime_seconds", "Seconds since start", value=stats["uptime_s"]
        )


def _ingress_and_supervision(stats: dict[str, Any]) -> Iterator[Metric]:
    dropped = CounterMetricFamily(
        "covergw_udp_dropped", "Datagrams dropped before decoding", labels=["port", "reason"]
    )
    for name, port in stats["ports"].items():
        for reason in ("not_allowed", "rate_limited"):
            if f"dropped_{reason}" in port:
                dropped.add_metric([name, reason], port[f"dropped_{reason}"])
    restarts = CounterMetricFamily(
        "covergw_part_restarts", "Restarts of a supervised part after a failure", labels=["part"]
    )
    refused = CounterMetricFamily(
        "covergw_refused_connections", "Local connections over the cap", labels=["server"]
    )
    supervision = stats.get("supervision", {})
    for part, health in supervision.get("parts", {}).items():
        restarts.add_metric([part], health["restarts"])
    for server in ("control", "metrics"):
        if server in supervision:
            refused.add_metric([server], supervision[server]["refused_connections"])
    yield from (dropped, restarts, refused)


class MetricsServer:
    """``GET /metrics`` on ``host:port``, from the event loop, with bounded resources."""

    def __init__(
        self,
        collector: StatsCollector,
        host: str,
        port: int,
        *,
        max_clients: int = MAX_CLIENTS,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.host = host
        self.port = port
        self.max_clients = max_clients
        self.read_timeout_s = read_timeout_s
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self.clients = 0
        self.refused_connections = 0
        self.bad_requests = 0
        self._server: asyncio.Server | None = None

    def stats(self) -> dict[str, int]:
        return {
            "clients": self.clients,
            "refused_connections": self.refused_connections,
            "bad_requests": self.bad_requests,
        }

    async def start(self) -> None:
        """Take the port (before READY: a port in use stops the start)."""
        if self._server is not None:
            return
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, limit=MAX_HEAD
            )
        except OSError as err:
            where = f"{self.host}:{self.port}"
            reason = err.strerror or str(err)
            raise TransportError(f"metrics: cannot listen on {where}: {reason}") from err

    async def serve(self, stop: asyncio.Event) -> None:
        """The supervised part: serve until ``stop``."""
        await self.start()
        try:
            await stop.wait()
        finally:
            if self._server is not None:
                self._server.close()
                self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= self.max_clients:
            self.refused_connections += 1
            writer.close()
            return
        self.clients += 1
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.read_timeout_s)
            except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                self.bad_requests += 1
                return
            method, _, rest = head.partition(b" ")
            target = rest.partition(b" ")[0]
            if method == b"GET" and target.split(b"?")[0] == b"/metrics":
                body = generate_latest(self.registry)
                writer.write(_response(b"200 OK", CONTENT_TYPE_LATEST.encode(), body))
            else:
                writer.write(_response(b"404 Not Found", b"text/plain", b"GET /metrics\n"))
            await asyncio.wait_for(writer.drain(), self.read_timeout_s)
        except (TimeoutError, ConnectionError) as err:
            log.debug("metrics client went away: %s", err)
        finally:
            self.clients -= 1
            with contextlib.suppress(ConnectionError):
                writer.close()


def _response(status: bytes, content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.0 "
        + status
        + b"\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
        + body
    )
