"""Prometheus metrics on localhost (off by default): the counters of the stats message.

prometheus-client serves from its own thread, and the queue's SQLite
connection belongs to the event loop's thread, so the exporter never asks the
gateway anything: the pipeline hands it a fresh stats snapshot every tick and
a scrape renders whatever snapshot is newest.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry


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


def serve(collector: StatsCollector, host: str, port: int) -> None:
    """Start the exporter's HTTP thread (it dies with the process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    start_http_server(port, addr=host, registry=registry)
