"""Issue 8's command findings, reproduced against the real daemon process and a real broker.

Each hostile request must get an answer (read at the broker) and the next
``ping`` must be answered; afterwards a registered cover's real alarm, sent
over real UDP, still reaches the platform and the daemon stops cleanly.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.protocol.codec import encode_frame
from gateway.protocol.messages import Event, EventCode, Frame, FrameFlags, MessageType, Tilt
from tests.harness import VALIDATORS, Broker, Collector, free_udp_port, spawn_daemon, to_toml

GW = "gw-hostile"
CMD = f"covers/{GW}/cmd"
ANSWERS = f"{CMD}/response"
REGISTRY = (
    "cover_id,owner_unit,cover_kind,node_id,address\nC-1,drainage,rain,00C0FFEE,西湖区文三路\n"
)


@dataclass
class Daemon:
    proc: subprocess.Popen[bytes]
    config: Path
    registry: Path
    udp_port: int
    log: Path

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def send_cover_open(self, seq: int) -> None:
        frame = Frame(
            0x00C0FFEE,
            seq,
            MessageType.EVENT,
            FrameFlags.NODE_ALARM,
            (Event(EventCode.COVER_OPENED, 0, 0), Tilt(40, 0)),
        )
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(encode_frame(frame), ("127.0.0.1", self.udp_port))


@contextmanager
def daemon(tmp_path: Path, broker: Broker, commands: dict[str, Any]) -> Iterator[Daemon]:
    registry = tmp_path / "covers.csv"
    registry.write_text(REGISTRY, encoding="utf-8")
    udp_port = free_udp_port()
    data = {
        "gateway": {"id": GW, "state_dir": str(tmp_path / "state"), "registry": str(registry)},
        "uplink": {
            "host": "127.0.0.1",
            "port": broker.port,
            "stats_interval_s": 1,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
        },
        "queue": {"flush_interval_s": 0.05},
        "udp": [{"name": "nbiot0", "bind": f"127.0.0.1:{udp_port}"}],
        "commands": commands,
    }
    config = tmp_path / "gw.toml"
    config.write_text(to_toml(data), encoding="utf-8")
    log = tmp_path / "daemon.log"
    proc = spawn_daemon(config, log)
    try:
        yield Daemon(proc, config, registry, udp_port, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)


class Platform:
    """The platform's side: publishes requests, reads answers on the default answer topic."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client

    async def ask(
        self,
        payload: bytes | dict[str, Any],
        request_id: str | None,
        *,
        reply_to: str | None = None,
        timeout: float = 15.0,
    ) -> dict[str, Any]:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        props = Properties(PacketTypes.PUBLISH)
        if reply_to is not None:
            props.ResponseTopic = reply_to
        props.CorrelationData = uuid.uuid4().bytes
        await self.client.publish(CMD, raw, qos=1, properties=props)
        async with asyncio.timeout(timeout):
            async for message in self.client.messages:
                assert isinstance(message.payload, bytes)
                answer: dict[str, Any] = json.loads(message.payload)
                assert list(VALIDATORS["response"].iter_errors(answer)) == [], answer
                if answer["request_id"] == request_id:
                    assert str(message.topic) == ANSWERS
                    return answer
        raise AssertionError("no answer")  # pragma: no cover - the timeout raises first

    async def ready(self) -> None:
        """The daemon answers: it is up and subscribed (a request before that is not delivered)."""
        for attempt in range(60):
            try:
                await self.ask(
                    {"request_id": f"ready-{attempt}", "cmd": "ping"}, f"ready-{attempt}", timeout=1
                )
            except TimeoutError:
                continue
            return
        raise AssertionError("the daemon never answered")

    async def ping(self, tag: str) -> None:
        """Answered ok, waiting out the rate limit if a flood just emptied it."""
        for attempt in range(60):
            answer = await self.ask(
                {"request_id": f"{tag}-{attempt}", "cmd": "ping"}, f"{tag}-{attempt}", timeout=5
            )
            if answer["ok"]:
                assert answer["result"] == {"pong": True}
                return
            assert answer["error"]["code"] == "busy"
        raise AssertionError("ping never answered ok")


@asynccontextmanager
async def platform(broker: Broker) -> AsyncIterator[Platform]:
    async with aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        protocol=aiomqtt.ProtocolVersion.V5,
        identifier=f"platform-{uuid.uuid4().hex[:8]}",
    ) as client:
        await client.subscribe(ANSWERS, qos=1)
        yield Platform(client)


async def test_every_command_finding_is_answered_and_the_next_ping_too(tmp_path: Path) -> None:
    with (
        Broker(tmp_path / "broker") as broker,
        daemon(tmp_path, broker, {"rate_per_s": 50, "burst": 100}) as gw,
    ):
        async with Collector(broker.port) as collector, platform(broker) as p:
            await p.ready()

            frames = await p.ask(
                {"request_id": "h1", "cmd": "frames", "args": {"node": "00C0FFEE", "last": 5.0}},
                "h1",
            )
            assert frames["ok"]
            await p.ping("after-frames")

            bad_date = {"cover_id": "C-1", "on": True, "until": "2026-13-45T00:00:00.000Z"}
            answer = await p.ask({"request_id": "h2", "cmd": "maintenance", "args": bad_date}, "h2")
            assert answer["error"]["code"] == "invalid"
            await p.ping("after-date")

            nested = (
                b'{"request_id":"h3","cmd":"ping","args":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
            )
            answer = await p.ask(nested, "h3")
            assert answer["error"]["code"] == "invalid"
            await p.ping("after-nested")

            gw.registry.write_bytes(REGISTRY.encode("gbk"))
            answer = await p.ask({"request_id": "h4", "cmd": "reload"}, "h4")
            assert answer["error"]["code"] == "refused"
            gw.registry.write_text(REGISTRY, encoding="utf-8")
            await p.ping("after-gbk")

            for n, value in enumerate((b"NaN", b"Infinity", b"1e9")):
                raw = (
                    b'{"request_id":"t%d","cmd":"set_thresholds","args":{"cover_kind":"rain",'
                    b'"thresholds":{"offline_after_s":%s}}}' % (n, value)
                )
                answer = await p.ask(raw, f"t{n}")
                assert answer["error"]["code"] == "invalid"
            await p.ping("after-thresholds")

            foreign = await p.ask(
                {"request_id": "h5", "cmd": "ping"}, "h5", reply_to="someone/else"
            )
            assert foreign["error"]["code"] == "refused"

            big = b'{"request_id":"h6","cmd":"ping","pad":"' + b"x" * 200_000 + b'"}'
            answer = await p.ask(big, "h6")
            assert answer["error"]["code"] == "invalid"
            await p.ping("after-big")
            # Far over the Maximum Packet Size the gateway announced (MQTT 5): the broker
            # drops it, so it never reaches the box's memory; the gateway goes on serving.
            rss_before_huge = gw.rss_kb()
            huge = b'{"request_id":"h7","cmd":"ping","pad":"' + b"x" * 20_000_000 + b'"}'
            await p.client.publish(CMD, huge, qos=1)
            await p.ping("after-huge")
            assert not [r for r in collector.of("response") if r.get("request_id") == "h7"]
            assert gw.rss_kb() - rss_before_huge < 20_000  # a 20 MB payload was never read

            rss_before = gw.rss_kb()
            for n in range(3000):
                await p.client.publish(
                    CMD, json.dumps({"request_id": f"flood-{n}", "cmd": "ping"}), qos=0
                )
            await collector.wait_for(
                lambda: any(
                    s.get("commands", {}).get("received", 0) >= 3000 for s in collector.of("stats")
                ),
                timeout=60,
            )
            await p.ping("after-flood")
            stats = collector.of("stats")[-1]["commands"]
            assert stats["busy"] > 0
            assert stats["dropped"] > 0
            busy = [
                a for a in collector.of("response") if (a.get("error") or {}).get("code") == "busy"
            ]
            assert busy  # the platform was told
            growth_mb = (gw.rss_kb() - rss_before) / 1024
            assert growth_mb < 100, f"RSS grew {growth_mb:.0f} MB under a command flood"

            gw.config.write_text(
                gw.config.read_text().replace("[uplink]\n", "[uplink]\npassword = 424242\n")
            )
            secret = await p.ask({"request_id": "h7", "cmd": "reload"}, "h7")
            assert secret["error"]["code"] == "refused"
            assert "424242" not in json.dumps(secret)
            await collector.wait_for(
                lambda: any(
                    s.get("reload", {}).get("ok") is False and "password" in s["reload"]["reason"]
                    for s in collector.of("status")
                )
            )
            assert all("424242" not in json.dumps(s) for s in collector.of("status"))

            sent = time.monotonic()
            gw.send_cover_open(seq=1)
            await collector.wait_for(
                lambda: any(a["kind"] == "cover_open" for a in collector.alarms()), timeout=15
            )
            took = time.monotonic() - sent
            print(
                f"cover_open after the attacks: {took:.2f} s; flood RSS growth {growth_mb:.1f} MB"
            )
            print(f"flood: {stats['busy']} answered busy, {stats['dropped']} dropped unanswered")
            assert gw.proc.poll() is None  # alive through all of it
        assert collector.errors == []
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(15) == 0, gw.log.read_text()[-2000:]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=12,
)
fuzz_requests = st.fixed_dictionaries(
    {
        "request_id": st.text(min_size=1, max_size=12),
        "cmd": st.sampled_from(
            [
                "ping",
                "status",
                "set_thresholds",
                "clear_thresholds",
                "maintenance",
                "frames",
                "ack_alarm",
                "active_alarms",
                "rezero",
            ]
        ),
    },
    optional={
        "args": st.dictionaries(
            st.sampled_from(
                [
                    "cover_id",
                    "cover_kind",
                    "thresholds",
                    "on",
                    "until",
                    "node",
                    "last",
                    "alarm_id",
                    "by",
                ]
            ),
            json_values | st.sampled_from(["C-1", "rain", "00C0FFEE", True, 5.0]),
            max_size=3,
        )
    },
)


def test_fuzzed_commands_through_the_broker_leave_ping_answered(tmp_path: Path) -> None:
    with (
        Broker(tmp_path / "broker") as broker,
        daemon(tmp_path, broker, {"rate_per_s": 1000, "burst": 10000}),
    ):

        async def one(request: dict[str, Any]) -> None:
            async with platform(broker) as p:
                raw = json.dumps(request).encode()  # NaN/Infinity floats go out as such
                answer = await p.ask(raw, request["request_id"])
                assert answer["ok"] or answer["error"]["code"] != "internal", answer
                await p.ping(f"fuzz-{uuid.uuid4().hex[:6]}")

        asyncio.run(_ready(broker))

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        @given(request=fuzz_requests)
        def case(request: dict[str, Any]) -> None:
            asyncio.run(one(request))

        case()


async def _ready(broker: Broker) -> None:
    async with platform(broker) as p:
        await p.ready()
