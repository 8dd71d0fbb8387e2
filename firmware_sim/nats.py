"""NATS servers with their MQTT listener, for broker-compatibility tests and the fleet run.

Each server is ours: its own free loopback ports, its own JetStream store
(MQTT sessions and retained messages live there, so a stop and start is an
outage that sessions survive), its own log. A cluster is three (or more)
such servers routed to each other. Nothing here touches a system service.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from firmware_sim.broker import free_port, wait_port

NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


@dataclass
class NatsServer:
    """One nats-server; ``auth`` is a NATS config block (accounts) or empty for anonymous."""

    workdir: Path
    name: str = "n1"
    auth: str = ""
    routes: list[int] = field(default_factory=list)  # cluster ports of the peers
    mqtt_extra: str = ""  # more of the mqtt {} block
    client_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        cluster = ""
        if self.routes:
            peers = ", ".join(f'"nats-route://127.0.0.1:{p}"' for p in self.routes)
            cluster = (
                f"cluster {{ name: covergw\n  listen: 127.0.0.1:{self.cluster_port}\n"
                f"  routes: [{peers}] }}\n"
            )
        return (
            f"server_name: {self.name}\n"
            f"listen: 127.0.0.1:{self.client_port}\n"
            f'jetstream {{ store_dir: "{self.workdir}/js" }}\n'
            f"mqtt {{ listen: 127.0.0.1:{self.mqtt_port}{self.mqtt_extra} }}\n"
            f"{cluster}{self.auth}\n"
        )

    def start(self, *, wait: bool = True) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "nats.conf"
        conf.write_text(self.config())
        self.proc = subprocess.Popen(  # noqa: S603 - our binary, our config file
            [NATS_SERVER, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=(self.workdir / "nats.log").open("ab"),
        )
        if wait:
            wait_port(self.mqtt_port, what=f"nats-server {self.name}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.proc = None

    def kill(self) -> None:
        """A node dies: no goodbye to anyone."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class NatsCluster:
    """``size`` routed servers on loopback, JetStream replicated over them."""

    workdir: Path
    size: int = 3
    auth: str = ""
    nodes: list[NatsServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        cluster_ports = [free_port() for _ in range(self.size)]
        for i in range(self.size):
            self.nodes.append(
                NatsServer(
                    self.workdir / f"n{i + 1}",
                    name=f"n{i + 1}",
                    auth=self.auth,
                    routes=[p for j, p in enumerate(cluster_ports) if j != i],
                    cluster_port=cluster_ports[i],
                    # Sessions and retained messages on every node: with fewer
                    # replicas (NATS picks what is up when the first client
                    # connects) one dead node can take the MQTT streams down.
                    mqtt_extra=f"\n  stream_replicas: {min(3, self.size)}"
                    f"\n  consumer_replicas: {min(3, self.size)}",
                )
            )

    def start(self) -> None:
        for node in self.nodes:
            node.start(wait=False)
        for node in self.nodes:
            wait_port(node.mqtt_port, what=f"nats-server {node.name}")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
