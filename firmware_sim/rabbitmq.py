"""A RabbitMQ node of our own with the MQTT plugin, for broker-compatibility tests.

Never the machine's RabbitMQ: our own node name, ports, Erlang port mapper
(``ERL_EPMD_PORT``), plugins file, mnesia, log and cookie directories, all
under the work directory. ``stop_app``/``start_app`` give an outage in
seconds (a full node start takes ~20 s on a loaded 2-core machine).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from firmware_sim.broker import free_port, wait_port

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")


def available() -> bool:
    """The unwrapped server script (Debian's /usr/sbin one switches to the system user)."""
    return (RABBIT_BIN / "rabbitmq-server").exists() and shutil.which("epmd") is not None


@dataclass
class RabbitNode:
    workdir: Path
    mqtt_port: int = field(default_factory=free_port)
    amqp_port: int = field(default_factory=free_port)
    dist_port: int = field(default_factory=free_port)
    epmd_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def nodename(self) -> str:
        return f"covergw-test-{self.mqtt_port}@localhost"

    def env(self) -> dict[str, str]:
        w = self.workdir
        return {
            **os.environ,
            "HOME": str(w),  # the Erlang cookie lives here
            "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.amqp_port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
            "RABBITMQ_LOG_BASE": str(w / "log"),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq"),
            "RABBITMQ_PID_FILE": str(w / "rabbitmq.pid"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(w / "plugins-expand"),
        }

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (self.workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
            "mqtt.allow_anonymous = true\n"
            "loopback_users = none\n"
        )
        self.proc = subprocess.Popen(  # noqa: S603 - the packaged script, our own environment
            [str(RABBIT_BIN / "rabbitmq-server")],
            env=self.env(),
            stdout=(self.workdir / "server.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        wait_port(self.mqtt_port, within_s=90, what="rabbitmq")

    def ctl(self, *args: str) -> None:
        subprocess.run(  # noqa: S603 - the packaged tool, our own node
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.nodename, *args],
            env=self.env(),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def outage_begin(self) -> None:
        """The broker goes away (its listeners close), the node's data stays."""
        self.ctl("stop_app")

    def outage_end(self) -> None:
        self.ctl("start_app")
        wait_port(self.mqtt_port, within_s=60, what="rabbitmq")

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.ctl("stop")
        except (subprocess.SubprocessError, OSError):
            self.proc.kill()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
        subprocess.run(  # noqa: S603 - our own port mapper, on its own port
            ["epmd", "-port", str(self.epmd_port), "-kill"],  # noqa: S607
            check=False,
            capture_output=True,
            timeout=10,
        )

    def __enter__(self) -> RabbitNode:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
