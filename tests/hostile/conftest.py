"""The adversarial suite's frame: the real daemon, a real Mosquitto, a real pty radio.

Every hostile test runs ``covergw run`` as a process (as systemd would), attacks it
through a real boundary (UDP, the control socket, the broker, a file) and then
proves it still serves with ``await gw.assert_serving()``:

- a ``ping`` command over MQTT gets its answer, and
- a registered cover's real alarm (``cover_open`` from node 00C0FFEE on the radio
  pty) reaches the broker within ``ALARM_WITHIN_S`` (2 s) of the frame being
  written, then clears.

Use the ``gw`` fixture for the default daemon, or ``launch`` to start one with
your own configuration (``launch(udp={"allow": [...]})``; the tables you give are
merged over the defaults). Attack UDP from another loopback source
(``gw.send_udp(data, source="127.0.0.2")``) so per-source limits never throttle
the probe, which uses the radio.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from firmware_sim.ptys import PtyPort
from gateway.protocol.codec import encode_frame
from gateway.protocol.messages import Event, EventCode, Frame, FrameFlags, MessageType, Tilt
from tests.harness import Broker, Collector, free_udp_port, spawn_daemon, to_toml

GATEWAY_ID = "gw-hostile"
COVER_ID = "HZ-0001"
NODE_ID = 0x00C0FFEE
REGISTRY = f"cover_id,owner_unit,node_id\n{COVER_ID},drainage,{NODE_ID:08X}\n"
ALARM_WITHIN_S = 2.0
START_TIMEOUT_S = 30.0  # a loaded 2-core box; readiness is waited on, not slept for
STOP_WITHIN_S = 10.0
RESEND_S = 3.0  # a command not answered by then is sent again

_seq = itertools.count(1)  # one sequence for the probe node across daemons of a test


def base_config(tmp: Path, *, broker_port: int, radio: str, udp_port: int) -> dict[str, Any]:
    """The hostile suite's default gateway: one radio (the probe), one UDP input (the target)."""
    registry = tmp / "covers.csv"
    registry.write_text(REGISTRY, encoding="utf-8")
    return {
        "gateway": {"id": GATEWAY_ID, "state_dir": str(tmp / "state"), "registry": str(registry)},
        "uplink": {
            "host": "127.0.0.1",
            "port": broker_port,
            "stats_interval_s": 1,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
            "publish_timeout_s": 3,
        },
        "queue": {"flush_interval_s": 0.05},
        "radio": [{"name": "lora0", "port": radio, "reopen_min_s": 0.1, "reopen_max_s": 0.5}],
        "udp": [{"name": "nbiot0", "bind": f"127.0.0.1:{udp_port}"}],
    }


def merged(base: dict[str, Any], **tables: Any) -> dict[str, Any]:
    """``tables`` over ``base``: a dict merges into the table; ``udp``/``radio`` dicts into [0]."""
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in tables.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), list) and out[key]:
            out[key] = [{**out[key][0], **value}, *out[key][1:]]
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


@dataclass
class Daemon:
    """One ``covergw run`` process and the real parts around it."""

    proc: subprocess.Popen[bytes]
    config: Path
    log: Path
    broker: Broker
    collector: Collector
    radio: PtyPort
    udp_port: int
    state_dir: Path
    topic_root: str = f"covers/{GATEWAY_ID}"
    alarm_latencies_s: list[float] = field(default_factory=list)

    # --- what a test does to it ---

    def send_udp(self, data: bytes, *, source: str = "127.0.0.2") -> None:
        """One datagram to the daemon's UDP input from ``source`` (any 127/8 address works)."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((source, 0))
            s.sendto(data, ("127.0.0.1", self.udp_port))

    def send_radio(self, frame: Frame) -> None:
        self.radio.write(encode_frame(frame))

    def send_radio_report(self) -> None:
        """An ordinary report from the probe node: something for ``tail`` to show."""
        frame = Frame(
            NODE_ID, next(_seq) & 0xFFFF, MessageType.REPORT, FrameFlags.NONE, (Tilt(0.0, 0.0),)
        )
        self.send_radio(frame)

    async def wait_log(self, text: str, *, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until ``text`` appears in the daemon's log (for states nothing else shows)."""
        deadline = time.monotonic() + timeout_s
        while text not in self.log_text():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"never logged {text!r}:\n{self.log_text()}")
            await asyncio.sleep(0.05)  # a log file has no readiness to wait on

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    async def stop(self, *, within_s: float = STOP_WITHIN_S) -> int:
        """SIGTERM; the exit status, or fail if it is not gone within ``within_s``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return await wait_exit(self.proc, within_s)

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")

    # --- proving it still serves ---

    async def ping(self, *, timeout_s: float = 10.0) -> dict[str, Any]:
        """A ``ping`` over MQTT answered with a pong; ``busy`` (the command rate limit) is retried.

        Being told "busy" is an answer too, but a test that pings after every case
        means "is it still serving": ask again once the bucket has refilled.
        """
        async with asyncio.timeout(timeout_s):
            while True:
                answer = await self.command({"cmd": "ping"}, timeout_s=timeout_s)
                if (answer.get("error") or {}).get("code") != "busy":
                    return answer
                await asyncio.sleep(0.25)  # the bucket refills at commands.rate_per_s

    async def command(self, request: dict[str, Any], *, timeout_s: float = 10.0) -> dict[str, Any]:
        request_id = str(uuid.uuid4())
        payload = json.dumps({"request_id": request_id, **request})

        def answered() -> bool:
            return any(r.get("request_id") == request_id for r in self.collector.of("response"))

        # Sent again (same request_id: answered once, carried out once) until answered:
        # right after a first connect the daemon may not have subscribed yet.
        async with asyncio.timeout(timeout_s):
            while not answered():
                await publish(self.broker.port, f"{self.topic_root}/cmd", payload.encode())
                with contextlib.suppress(TimeoutError):
                    await self.collector.wait_for(answered, timeout=RESEND_S)
        return next(r for r in self.collector.of("response") if r.get("request_id") == request_id)

    async def cover_alarm(self, *, within_s: float = ALARM_WITHIN_S) -> float:
        """The registered cover opens and closes on the radio; the raised alarm's latency."""
        before = {a["msg_id"] for a in self.collector.alarms()}

        def new(state: str) -> list[dict[str, Any]]:
            return [
                a
                for a in self.collector.alarms()
                if a["msg_id"] not in before
                and a["kind"] == "cover_open"
                and a["state"] == state
                and (a["cover"] or {}).get("cover_id") == COVER_ID
            ]

        sent = time.monotonic()
        self.send_radio(_event(EventCode.COVER_OPENED))
        await self.collector.wait_for(lambda: bool(new("raised")), timeout=max(within_s, 10.0))
        raised = next(
            m.at
            for m in self.collector.messages
            if m.topic.endswith("/alarm") and m.payload["msg_id"] == new("raised")[0]["msg_id"]
        )
        latency = raised - sent
        self.alarm_latencies_s.append(latency)
        self.send_radio(_event(EventCode.COVER_CLOSED))
        await self.collector.wait_for(lambda: bool(new("cleared")), timeout=10.0)
        assert latency <= within_s, f"cover_open took {latency:.2f} s to reach the broker"
        return latency

    async def assert_serving(self) -> None:
        """Alive, answering commands, and a real alarm arrives within 2 s."""
        assert self.proc.poll() is None, f"daemon exited {self.proc.returncode}:\n{self.log_text()}"
        answer = await self.ping()
        assert answer["ok"] is True
        assert answer["result"] == {"pong": True}
        await self.cover_alarm()


def _event(code: EventCode) -> Frame:
    tilt = Tilt(60.0, 0.0) if code is EventCode.COVER_OPENED else Tilt(0.0, 0.0)
    flags = FrameFlags.NODE_ALARM if code is EventCode.COVER_OPENED else FrameFlags.NONE
    value = round(tilt.magnitude_deg * 100)
    return Frame(
        NODE_ID, next(_seq) & 0xFFFF, MessageType.EVENT, flags, (Event(code, 0, value), tilt)
    )


async def publish(port: int, topic: str, payload: bytes) -> None:
    client_id = f"test-platform-{uuid.uuid4().hex[:8]}"
    async with aiomqtt.Client(
        "127.0.0.1", port, identifier=client_id, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.publish(topic, payload, qos=1)


async def wait_exit(proc: subprocess.Popen[bytes], within_s: float) -> int:
    """The process's exit status; fails the test if it is still running after ``within_s``."""
    deadline = time.monotonic() + within_s
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"the daemon did not exit within {within_s} s")
        await asyncio.sleep(0.05)  # polling a child's exit: there is no readiness to wait on
    return proc.returncode


async def wait_online(collector: Collector, proc: subprocess.Popen[bytes], log: Path) -> None:
    """Until the daemon's retained status says ``online`` (or it exits: fail with its log)."""

    def online() -> bool:
        if proc.poll() is not None:
            return True
        status = [m.payload for m in collector.messages if m.topic.endswith("/status")]
        return bool(status) and status[-1].get("state") == "online"

    await collector.wait_for(online, timeout=START_TIMEOUT_S)
    if proc.poll() is not None:
        pytest.fail(f"daemon exited {proc.returncode} at start:\n{log.read_text(errors='replace')}")


Launch = Callable[..., Awaitable[Daemon]]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    with Broker(tmp_path / "broker") as b:
        yield b


@pytest.fixture
async def collector(broker: Broker) -> AsyncIterator[Collector]:
    async with Collector(broker.port) as c:
        yield c


@pytest.fixture
def radio() -> Iterator[PtyPort]:
    port = PtyPort()
    yield port
    port.close()


@pytest.fixture
async def launch(
    tmp_path: Path, broker: Broker, collector: Collector, radio: PtyPort
) -> AsyncIterator[Launch]:
    """``await launch(**tables)``: start a daemon with those config tables over the defaults.

    It returns once the daemon's status is ``online`` and a ``ping`` is answered.
    ``launch(..., wait=False)`` returns at once (for daemons meant to refuse to start).
    Every daemon started is stopped (SIGTERM, then SIGKILL) at teardown.
    """
    started: list[Daemon] = []
    udp_port = free_udp_port()

    async def start(*, wait: bool = True, **tables: Any) -> Daemon:
        data = merged(
            base_config(tmp_path, broker_port=broker.port, radio=radio.path, udp_port=udp_port),
            **tables,
        )
        config = tmp_path / "gw.toml"
        config.write_text(to_toml(data), encoding="utf-8")
        log = tmp_path / "daemon.log"
        proc = spawn_daemon(config, log)
        gw = Daemon(
            proc,
            config,
            log,
            broker,
            collector,
            radio,
            udp_port,
            Path(data["gateway"]["state_dir"]),
        )
        started.append(gw)
        if wait:
            try:
                await wait_online(collector, proc, log)
                await gw.ping(timeout_s=START_TIMEOUT_S)
            except TimeoutError:
                pytest.fail(f"daemon not serving after {START_TIMEOUT_S} s:\n{gw.log_text()}")
        return gw

    yield start
    for gw in started:
        if gw.proc.poll() is None:
            gw.proc.send_signal(signal.SIGTERM)
            try:
                gw.proc.wait(STOP_WITHIN_S)
            except subprocess.TimeoutExpired:
                gw.proc.kill()
                gw.proc.wait()


@pytest.fixture
async def gw(launch: Launch) -> Daemon:
    """The default daemon, online and answering."""
    return await launch()


def check_config(config: Path) -> subprocess.CompletedProcess[str]:
    """``covergw check-config`` as an operator runs it: its status and both streams."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


def write_private(path: Path, text: str, mode: int = 0o600) -> Path:
    """A file only its owner may read (``mode`` to make it otherwise)."""
    path.write_text(text, encoding="utf-8")
    os.chmod(path, mode)
    return path
