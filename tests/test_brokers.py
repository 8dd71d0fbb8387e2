"""The real daemon against every broker this machine can run, with ``protocol = "auto"``.

Mosquitto (MQTT 5), NATS's MQTT listener and RabbitMQ's MQTT plugin (both
3.1.1 only: NATS refuses 5 with CONNACK 0x84, RabbitMQ 3.10 never answers
it). Each broker is the test's own, on free loopback ports. Per broker:
birth and retained status with the negotiated version, a command answered
right at ``online``, a QoS 1 alarm and telemetry, an outage with nothing
lost and the same session after it, the last will of a killed gateway, a new
session after a restart, and a clean goodbye.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from firmware_sim import rabbitmq
from firmware_sim.broker import Broker
from firmware_sim.nats import NatsServer
from gateway.protocol.messages import EventCode
from tests.harness import Collector
from tests.uplink_rig import Gw, command, retained_status


@dataclass
class Peer:
    """A broker under test: its MQTT port, an outage, and what version it speaks."""

    port: int
    protocol: str
    outage_begin: Callable[[], None]
    outage_end: Callable[[], None]


def mosquitto(workdir: Path) -> Iterator[Peer]:
    with Broker(workdir) as broker:
        yield Peer(broker.port, "5", broker.stop, broker.start)


def nats(workdir: Path) -> Iterator[Peer]:
    if shutil.which("nats-server") is None and not Path("/usr/sbin/nats-server").exists():
        pytest.skip("nats-server is not installed (Debian package nats-server)")
    with NatsServer(workdir) as server:
        yield Peer(server.mqtt_port, "3.1.1", server.stop, server.start)


def rabbit(workdir: Path) -> Iterator[Peer]:
    if not rabbitmq.available():
        pytest.skip("rabbitmq-server is not installed (Debian package rabbitmq-server)")
    with rabbitmq.RabbitNode(workdir) as node:
        yield Peer(node.mqtt_port, "3.1.1", node.outage_begin, node.outage_end)


@pytest.fixture(params=[mosquitto, nats, rabbit], ids=["mosquitto", "nats", "rabbitmq"])
def peer(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Peer]:
    yield from request.param(tmp_path / "broker")


async def queued(gw: Gw, rows: int) -> None:
    """Until the daemon's queue holds ``rows`` messages (committed while the broker is away)."""
    try:
        async with asyncio.timeout(20):
            while len(gw.queued()) < rows:
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"queue holds {gw.queued()}\n{gw.log_text()}") from None


async def test_the_daemon_on_every_broker(peer: Peer, tmp_path: Path) -> None:
    gw = Gw(tmp_path / "gw", port=peer.port)
    try:
        async with Collector(peer.port) as platform:

            def statuses() -> list[dict[str, object]]:
                return platform.of("status")

            def answered(request_id: str) -> bool:
                return any(a["request_id"] == request_id for a in platform.of("response"))

            # Birth: MQTT 5 first, 3.1.1 where the broker refuses it.
            gw.start()
            await platform.wait_for(lambda: any(s["state"] == "online" for s in statuses()), 30)
            online = statuses()[-1]
            assert (online["protocol"], online["session"], online["connection"]) == (
                peer.protocol,
                1,
                1,
            )
            # A command sent on seeing online is carried out: the subscription came first.
            request = await command(peer.port, "gw-test")
            await platform.wait_for(lambda: answered(request), 15)
            assert (await retained_status(peer.port, "gw-test"))["state"] == "online"

            # A QoS 1 alarm and telemetry.
            # (One at a time: the pipeline takes an EVENT ahead of a REPORT sent just
            # before it, and that flat REPORT would then clear the alarm at once.)
            gw.report()
            await platform.wait_for(lambda: len(platform.readings()) >= 1)
            gw.event(EventCode.COVER_OPENED)
            await platform.wait_for(
                lambda: len(platform.readings()) >= 2 and len(platform.alarms()) >= 1
            )

            # An outage: what happens meanwhile is queued and delivered, nothing lost.
            peer.outage_begin()
            gw.report()
            gw.event(EventCode.COVER_CLOSED)
            gw.report()
            await queued(gw, 4)  # three readings and the cleared alarm
            peer.outage_end()
            await platform.wait_for(
                lambda: len(platform.readings()) >= 5 and len(platform.alarms()) >= 2, 30
            )
            await platform.wait_for(lambda: statuses()[-1].get("connection") == 2, 15)
            assert statuses()[-1]["session"] == 1  # the same run: the broker went, not we

            # A killed gateway leaves its will; a restarted one starts a new session.
            gw.kill()
            await platform.wait_for(lambda: statuses()[-1]["state"] == "offline", 30)
            assert statuses()[-1]["reason"] == "connection lost"
            assert (await retained_status(peer.port, "gw-test"))["state"] == "offline"
            gw.start()
            await platform.wait_for(lambda: statuses()[-1]["state"] == "online", 30)
            assert statuses()[-1]["session"] == 2
            assert gw.stop() == 0
            await platform.wait_for(lambda: statuses()[-1]["state"] == "offline", 15)
            assert statuses()[-1]["reason"] == "shutdown"
    finally:
        gw.close()
    readings = platform.readings()
    assert len(readings) == 5, [r["source"].get("seq") for r in readings]
    assert sorted(r["source"]["seq"] for r in readings) == [0, 1, 2, 3, 4]
    kinds = sorted((a["kind"], a["state"]) for a in platform.alarms())
    assert kinds == [("cover_open", "cleared"), ("cover_open", "raised")]
    assert platform.errors == []
