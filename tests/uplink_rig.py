"""The real daemon as a process, fed SCN-1 frames over UDP, for uplink and broker tests."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import aiomqtt

from firmware_sim.node import SimNode
from gateway.protocol.codec import encode_frame
from gateway.protocol.messages import EventCode
from tests.harness import free_udp_port, to_toml

NODE = 0x00C0FFEE
REGISTRY = "cover_id,owner_unit,node_id\nHZ-0001,drainage,00C0FFEE\n"


class Gw:
    """One gateway daemon process, its config, its UDP port and its node."""

    def __init__(
        self,
        workdir: Path,
        *,
        gateway_id: str = "gw-test",
        port: int | None = None,
        uplink: dict[str, Any] | None = None,
        node_id: int = NODE,
    ) -> None:
        self.workdir = workdir
        self.gateway_id = gateway_id
        self.udp_port = free_udp_port()
        self.node = SimNode(node_id)
        self.log = workdir / "daemon.log"
        self.config = workdir / "gw.toml"
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        registry = workdir / "covers.csv"
        registry.write_text(
            REGISTRY.replace("00C0FFEE", f"{node_id:08X}").replace("HZ-0001", f"{gateway_id}-c1"),
            encoding="utf-8",
        )
        up: dict[str, Any] = {
            "stats_interval_s": 1,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
            "publish_timeout_s": 3,
        }
        if port is not None:
            up |= {"host": "127.0.0.1", "port": port}
        data = {
            "gateway": {
                "id": gateway_id,
                "state_dir": str(workdir / "state"),
                "registry": str(registry),
            },
            "uplink": up | (uplink or {}),
            "queue": {"flush_interval_s": 0.05},
            "udp": [{"name": "nbiot", "bind": f"127.0.0.1:{self.udp_port}"}],
        }
        self.config.write_text(to_toml(data), encoding="utf-8")
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    # --- the process ---

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway.cli",
                "--log-level",
                os.environ.get("COVERGW_TEST_LOG_LEVEL", "INFO"),
                "run",
                "--config",
                str(self.config),
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("ab"),
        )

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM, and the exit status."""
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout)
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
        self._sock.close()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    # --- what the node sends ---

    def send(self, frame: bytes) -> None:
        self._sock.sendto(frame, ("127.0.0.1", self.udp_port))

    def report(self) -> None:
        self.send(encode_frame(self.node.report()))

    def event(self, code: EventCode) -> None:
        self.send(encode_frame(self.node.event(code)))

    # --- the queue, read as any SQLite reader would ---

    def queued(self) -> list[tuple[int, str]]:
        """(lane, topic) of every alarm and reading still in the queue."""
        db = self.workdir / "state" / "queue.db"
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            # Topics are stored once (queue schema v3): the row keeps the topic's id;
            # a telemetry row holds n readings (schema v4).
            rows = conn.execute(
                "SELECT o.lane, t.topic, o.n FROM outbox o JOIN topics t ON t.id = o.topic"
                " ORDER BY o.seq"
            )
            return [(int(a), str(b)) for a, b, n in rows for _ in range(n)]
        finally:
            conn.close()


async def command(port: int, gateway_id: str, cmd: str = "ping") -> str:
    """Publish a command as the platform does (3.1.1, QoS 1); the answer's request_id."""
    request_id = uuid.uuid4().hex
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"platform-{request_id[:8]}", timeout=10
    ) as client:
        payload = json.dumps({"request_id": request_id, "cmd": cmd})
        await client.publish(f"covers/{gateway_id}/cmd", payload, qos=1)
    return request_id


async def retained_status(port: int, gateway_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """What a platform that connects now is told: the retained status."""
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=f"late-{uuid.uuid4().hex[:8]}", timeout=10
    ) as client:
        await client.subscribe(f"covers/{gateway_id}/status", qos=1)
        async with asyncio.timeout(timeout):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                status: dict[str, Any] = json.loads(message.payload)
                return status
    raise AssertionError("no retained status")  # pragma: no cover - timeout raises first
