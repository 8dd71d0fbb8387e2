"""A fleet of gateway daemons on a three-node NATS cluster, and the platform that reads them.

Used by ``scripts/fleet.py`` (50 gateways, minutes on 2 cores) and by the
test suite (3 gateways, seconds). Everything is real and on loopback: the
NATS cluster with MQTT and JetStream, one daemon process per gateway with
its own credentials (a NATS user allowed to publish only under its own
topic root and to read only its command topic), UDP frames from a
simulated node per gateway, and a platform consumer with a persistent
session on a node of its own choosing.

The run: every gateway comes online and raises ``cover_open``; one node is
killed (SIGKILL); every gateway clears its alarm at once, so the gateways
of the dead node queue theirs and deliver after reconnecting to another
node; a gateway's credentials are used to publish under another gateway's
root. :class:`FleetResult` holds what the platform saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiomqtt

from firmware_sim.nats import NatsCluster
from firmware_sim.node import SimNode
from gateway.protocol.codec import encode_frame
from gateway.protocol.messages import EventCode

PLATFORM_USER = "platform"


def gateway_id(i: int) -> str:
    return f"gw-{i:03d}"


def nats_auth(gateways: list[str]) -> str:
    """One account; per-user permissions: each gateway writes only its own root.

    NATS maps MQTT ``covers/gw-001/alarm`` to subject ``covers.gw-001.alarm``. An
    MQTT client's QoS 1 subscription is delivered on ``$MQTT.sub.<id>``, which
    the user must be allowed to subscribe to; ``covers/#`` also needs ``covers``.
    """
    users = [
        f'{{user: "{g}", password: "pw-{g}", permissions: {{'
        f'publish: {{allow: ["covers.{g}.>"]}}, '
        f'subscribe: {{allow: ["covers.{g}.cmd", "$MQTT.sub.>"]}}}}}}'
        for g in gateways
    ]
    users.append(
        f'{{user: "{PLATFORM_USER}", password: "pw-{PLATFORM_USER}", permissions: {{'
        'publish: {allow: ["covers.*.cmd"]}, '
        'subscribe: {allow: ["covers", "covers.>", "$MQTT.sub.>"]}}}'
    )
    return "accounts { COVERS { jetstream: enabled, users: [\n  " + ",\n  ".join(users) + "\n] } }"


def _free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class FleetGateway:
    """One daemon process, homed on one node of the cluster, failing over to the others."""

    index: int
    workdir: Path
    hosts: list[str]
    home: int  # index of the node it connects to first
    udp_port: int = field(default_factory=_free_udp_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def id(self) -> str:
        return gateway_id(self.index)

    @property
    def node(self) -> SimNode:
        return SimNode(0x00F10000 + self.index)

    def write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        registry = self.workdir / "covers.csv"
        registry.write_text(
            f"cover_id,owner_unit,node_id\n{self.id}-c1,drainage,{0x00F10000 + self.index:08X}\n",
            encoding="utf-8",
        )
        hosts = ", ".join(json.dumps(h) for h in self.hosts)
        config = self.workdir / "gw.toml"
        config.write_text(
            "[gateway]\n"
            f'id = "{self.id}"\n'
            f'state_dir = "{self.workdir / "state"}"\n'
            f'registry = "{registry}"\n'
            "[uplink]\n"
            f"hosts = [{hosts}]\n"
            f'username = "{self.id}"\n'
            f'password = "pw-{self.id}"\n'
            "reconnect_min_s = 0.5\n"
            "reconnect_max_s = 5\n"
            "publish_timeout_s = 5\n"
            "stats_interval_s = 60\n"
            "[queue]\n"
            "flush_interval_s = 0.05\n"
            "[[udp]]\n"
            'name = "nbiot"\n'
            f'bind = "127.0.0.1:{self.udp_port}"\n',
            encoding="utf-8",
        )
        return config

    def start(self) -> None:
        config = self.write_config()
        self.proc = subprocess.Popen(  # noqa: S603 - our own daemon
            [sys.executable, "-m", "gateway.cli", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "daemon.log").open("ab"),
        )

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process so far."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def rss_mb(self) -> float:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


@dataclass
class Platform:
    """The city's consumer: a persistent session reading every gateway's topics."""

    port: int
    received: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        connected = asyncio.Event()
        self.task = asyncio.create_task(self._run(connected))
        await asyncio.wait_for(connected.wait(), 60)

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def _run(self, connected: asyncio.Event) -> None:
        client = aiomqtt.Client(
            "127.0.0.1",
            self.port,
            identifier="platform-consumer-1",
            username=PLATFORM_USER,
            password=f"pw-{PLATFORM_USER}",
            clean_session=False,
            timeout=10,
        )
        while True:
            try:
                async with client:
                    await client.subscribe("covers/#", qos=1)
                    connected.set()
                    async for message in client.messages:
                        if isinstance(message.payload, bytes):
                            with contextlib.suppress(ValueError):
                                payload = json.loads(message.payload)
                                self.received.append(
                                    (str(message.topic), payload, time.monotonic())
                                )
                                self.arrived.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.5)

    def of(self, gateway: str, kind: str) -> list[tuple[dict[str, Any], float]]:
        topic = f"covers/{gateway}/{kind}"
        return [(p, at) for t, p, at in self.received if t == topic]

    async def until(self, predicate: Any, within: float, what: str) -> None:
        try:
            async with asyncio.timeout(within):
                while not predicate():
                    self.arrived.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.arrived.wait(), 0.5)
        except TimeoutError:
            raise AssertionError(f"timed out after {within} s waiting for {what}") from None


@dataclass
class FleetResult:
    gateways: int
    alarms_expected: int
    alarms_delivered: int  # distinct msg_id
    alarm_duplicates: int  # deliveries beyond the first (at least once allows them)
    alarms_without_cover: int
    alarms_missing: list[str]
    killed_node: int
    gateways_on_killed_node: int
    reconnect_s: list[float]  # kill → the gateway's next "online" at the platform
    connected_s: list[float]  # kill → the gateway connected to another node (its own log)
    spoof_delivered: bool  # a gateway published under another's root and it arrived
    rss_mb: list[float]
    cpu_s: list[float]
    run_s: float
    start_s: float  # first daemon started → all online

    def summary(self) -> dict[str, Any]:
        out = asdict(self)
        out["reconnect_s"] = _spread(self.reconnect_s)
        out["connected_s"] = _spread(self.connected_s)
        out["rss_mb"] = _spread(self.rss_mb)
        out["cpu_s"] = _spread(self.cpu_s)
        return out


def _spread(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    return {
        "min": round(min(values), 2),
        "median": round(statistics.median(values), 2),
        "max": round(max(values), 2),
    }


def _second_connect(g: FleetGateway) -> float:
    """When the gateway's log says it connected the second time (wall clock)."""
    for line in (g.workdir / "daemon.log").read_text(errors="replace").splitlines():
        if "uplink connected" in line and "connection 2)" in line:
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return stamp.timestamp()
    return float("nan")


async def _spoof(port: int, attacker: str, victim: str, platform: Platform) -> bool:
    """Publish an alarm under ``victim``'s root with ``attacker``'s credentials.

    Then a marker under the attacker's own root on the same connection: once
    the marker has arrived, a spoof that was let through would have too.
    """
    marker = uuid.uuid4().hex
    fake = {"msg_id": f"spoof-{marker}", "kind": "cover_open", "state": "cleared"}
    with contextlib.suppress(aiomqtt.MqttError):
        async with aiomqtt.Client(
            "127.0.0.1", port, identifier=f"spoofer-{marker[:8]}", username=attacker,
            password=f"pw-{attacker}", timeout=5,
        ) as client:  # fmt: skip
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(f"covers/{victim}/alarm", json.dumps(fake), qos=1)
            await client.publish(f"covers/{attacker}/probe", json.dumps({"marker": marker}), qos=1)
    await platform.until(
        lambda: any(p.get("marker") == marker for p, _ in platform.of(attacker, "probe")),
        30,
        "the spoofer's own marker",
    )
    return any(p.get("msg_id") == fake["msg_id"] for p, _ in platform.of(victim, "alarm"))


async def run_fleet(  # noqa: PLR0915 - one scenario, read top to bottom
    workdir: Path, *, gateways: int = 50, kill: int = 2, log: Any = print
) -> FleetResult:
    """See the module docstring; ``kill`` is the index of the node to kill."""
    ids = [gateway_id(i) for i in range(gateways)]
    began = time.monotonic()
    with NatsCluster(workdir / "nats", auth=nats_auth(ids)) as cluster:
        ports = [n.mqtt_port for n in cluster.nodes]
        consumer_node = (kill + 1) % len(ports)
        platform = Platform(ports[consumer_node])
        fleet = [
            FleetGateway(
                i,
                workdir / gateway_id(i),
                hosts=[f"127.0.0.1:{ports[(i + k) % len(ports)]}" for k in range(len(ports))],
                home=i % len(ports),
            )
            for i in range(gateways)
        ]
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        nodes = {g.id: g.node for g in fleet}

        def send(g: FleetGateway, code: EventCode) -> None:
            udp.sendto(encode_frame(nodes[g.id].event(code)), ("127.0.0.1", g.udp_port))

        def online(g: FleetGateway, connection: int = 1) -> bool:
            return any(
                p.get("state") == "online" and p.get("connection", 0) >= connection
                for p, _ in platform.of(g.id, "status")
            )

        def alarms(g: FleetGateway, state: str) -> list[dict[str, Any]]:
            return [p for p, _ in platform.of(g.id, "alarm") if p.get("state") == state]

        try:
            await platform.start()
            log(f"cluster up on {ports}; platform on node {consumer_node}")
            started = time.monotonic()
            for g in fleet:
                g.start()
            await platform.until(
                lambda: all(online(g) for g in fleet), 60 + 3 * gateways, "every gateway online"
            )
            start_s = time.monotonic() - started
            log(f"{gateways} gateways online in {start_s:.1f} s")
            for g in fleet:
                send(g, EventCode.COVER_OPENED)
            await platform.until(
                lambda: all(alarms(g, "raised") for g in fleet), 60 + gateways, "raised alarms"
            )
            log("every cover_open raised")

            victims = [g for g in fleet if g.home == kill]
            killed_at = time.monotonic()
            killed_wall = time.time()
            cluster.nodes[kill].kill()
            for g in fleet:  # at once: the dead node's gateways must queue theirs
                send(g, EventCode.COVER_CLOSED)
            await platform.until(
                lambda: all(online(g, 2) for g in victims), 60 + gateways, "failover"
            )
            reconnect = [
                min(at for p, at in platform.of(g.id, "status") if p.get("connection", 0) >= 2)
                - killed_at
                for g in victims
            ]
            log(f"node {kill} killed: {len(victims)} gateways back in ≤ {max(reconnect):.1f} s")
            await platform.until(
                lambda: all(alarms(g, "cleared") for g in fleet), 60 + gateways, "cleared alarms"
            )
            log("every cover_open cleared")

            attacker, victim = fleet[consumer_node], fleet[(consumer_node + 1) % gateways]
            spoofed = await _spoof(ports[consumer_node], attacker.id, victim.id, platform)

            connected = [_second_connect(g) - killed_wall for g in victims]
            rss = [g.rss_mb() for g in fleet]
            cpu = [g.cpu_s() for g in fleet]
        finally:
            for g in fleet:
                if g.proc is not None:
                    g.proc.send_signal(signal.SIGTERM)
            for g in fleet:
                if g.proc is not None:
                    try:
                        g.proc.wait(30)
                    except subprocess.TimeoutExpired:
                        g.proc.kill()
                        g.proc.wait(5)
            udp.close()
            await platform.stop()

    every: dict[str, int] = {}
    missing: list[str] = []
    without_cover = 0
    for g in fleet:
        for state in ("raised", "cleared"):
            got = alarms(g, state)
            if not got:
                missing.append(f"{g.id}:{state}")
            for a in got:
                every[a["msg_id"]] = every.get(a["msg_id"], 0) + 1
                if (a.get("cover") or {}).get("cover_id") != f"{g.id}-c1":
                    without_cover += 1
    return FleetResult(
        gateways=gateways,
        alarms_expected=2 * gateways,
        alarms_delivered=len(every),
        alarm_duplicates=sum(every.values()) - len(every),
        alarms_without_cover=without_cover,
        alarms_missing=missing,
        killed_node=kill,
        gateways_on_killed_node=len(victims),
        reconnect_s=reconnect,
        connected_s=connected,
        spoof_delivered=spoofed,
        rss_mb=rss,
        cpu_s=cpu,
        run_s=time.monotonic() - began,
        start_s=start_s,
    )
