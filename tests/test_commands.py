"""Commands from the platform over a real broker: answered, validated, idempotent."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_sim.broker import Broker
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.events import FrameHeard
from gateway.protocol.framing import Received
from gateway.protocol.messages import Event, EventCode, Frame, FrameFlags, MessageType, Tilt
from tests.harness import VALIDATORS, Collector

REGISTRY = "cover_id,owner_unit,cover_kind,node_id\nC-1,drainage,rain,00C0FFEE\n"
REPLIES = "covers/gw-c/platform-1/response"  # answers go only under the gateway's root


@asynccontextmanager
async def running(tmp_path: Path, broker: Broker, protocol: str = "5") -> AsyncIterator[Gateway]:
    (tmp_path / "covers.csv").write_text(REGISTRY)
    data = {
        "gateway": {
            "id": "gw-c",
            "state_dir": str(tmp_path / "s"),
            "registry": str(tmp_path / "covers.csv"),
        },
        "uplink": {"host": "127.0.0.1", "port": broker.port, "protocol": protocol},
    }
    gateway = Gateway(parse_config(data, base_dir=tmp_path))
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    await asyncio.sleep(0.5)
    try:
        yield gateway
    finally:
        stop.set()
        await task


class Platform:
    """The platform side: an MQTT 5 client that asks with a response topic and correlation data."""

    def __init__(self, client: aiomqtt.Client, reply_to: str = REPLIES) -> None:
        self.client = client
        self.reply_to = reply_to
        self.answers: dict[bytes, dict[str, Any]] = {}
        self.last_topic = ""

    async def ask(self, request: dict[str, Any] | bytes) -> dict[str, Any]:
        correlation = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_to
        props.CorrelationData = correlation
        payload = request if isinstance(request, bytes) else json.dumps(request)
        await self.client.publish("covers/gw-c/cmd", payload, qos=1, properties=props)
        async with asyncio.timeout(5):
            async for message in self.client.messages:
                assert message.properties is not None
                if message.properties.CorrelationData == correlation:
                    self.last_topic = str(message.topic)
                    assert isinstance(message.payload, bytes)
                    answer: dict[str, Any] = json.loads(message.payload)
                    assert list(VALIDATORS["response"].iter_errors(answer)) == []
                    return answer
        raise AssertionError("no answer")


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    with Broker(tmp_path / "broker") as b:
        yield b


def opened() -> FrameHeard:
    frame = Frame(
        0x00C0FFEE,
        9,
        MessageType.EVENT,
        FrameFlags.NODE_ALARM,
        (Event(EventCode.COVER_OPENED, 0, 0), Tilt(40, 0)),
    )
    return FrameHeard("lora0", time.time(), Received(frame, bytes.fromhex("A55A")))


async def test_commands_over_mqtt5(tmp_path: Path, broker: Broker) -> None:
    async with (
        running(tmp_path, broker) as gateway,
        aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
        Collector(broker.port) as collector,
    ):
        await client.subscribe(REPLIES, qos=1)
        await client.subscribe("covers/gw-c/cmd/response", qos=1)  # unreadable requests
        platform = Platform(client)

        pong = await platform.ask({"request_id": "r1", "cmd": "ping"})
        assert (pong["ok"], pong["result"], pong["request_id"]) == (True, {"pong": True}, "r1")

        set_ok = await platform.ask(
            {
                "request_id": "r2",
                "cmd": "set_thresholds",
                "args": {"cover_id": "C-1", "thresholds": {"tilt_deg": 7.5}},
            }
        )
        assert set_ok["ok"]
        cover = gateway.engine.registry.covers["C-1"]
        assert gateway.engine.thresholds(cover).tilt_deg == 7.5

        bad = await platform.ask(
            {
                "request_id": "r3",
                "cmd": "set_thresholds",
                "args": {"cover_id": "C-1", "thresholds": {"tilt_deg": -1}},
            }
        )
        assert (bad["ok"], bad["error"]["code"]) == (False, "invalid")
        assert "thresholds/tilt_deg" in bad["error"]["message"]
        assert gateway.engine.thresholds(cover).tilt_deg == 7.5  # nothing changed

        missing = await platform.ask(
            {"request_id": "r4", "cmd": "rezero", "args": {"cover_id": "C-404"}}
        )
        assert missing["error"]["code"] == "not_found"
        unknown = await platform.ask({"request_id": "r5", "cmd": "self_destruct"})
        assert unknown["error"]["code"] == "invalid"
        assert platform.last_topic == REPLIES
        garbage = await platform.ask(b"\xff not json")
        assert garbage["error"]["code"] == "invalid"
        assert platform.last_topic == "covers/gw-c/cmd/response"  # unreadable: the default topic

        on = {
            "request_id": "r6",
            "cmd": "maintenance",
            "args": {"cover_id": "C-1", "on": True},
        }
        first = await platform.ask(on)
        again = await platform.ask(on)  # the same request id: same answer, carried out once
        assert first == again
        gateway.submit(opened(), critical=True)
        await collector.wait_for(lambda: bool(collector.alarms()))
        assert collector.alarms()[0]["maintenance"] is True

        frames = await platform.ask(
            {"request_id": "r7", "cmd": "frames", "args": {"node": "00C0FFEE", "last": 5}}
        )
        assert [f["seq"] for f in frames["result"]["frames"]] == [9]
        status = await platform.ask({"request_id": "r8", "cmd": "status"})
        assert status["result"]["active_alarms"][0]["kind"] == "cover_open"
        reload = await platform.ask({"request_id": "r9", "cmd": "reload"})
        assert reload["error"]["code"] == "refused"  # started without a file: nothing changed
    assert collector.errors == []


async def test_commands_over_mqtt311_answer_on_the_fallback_topic(
    tmp_path: Path, broker: Broker
) -> None:
    async with (
        running(tmp_path, broker, protocol="3.1.1"),
        aiomqtt.Client("127.0.0.1", broker.port) as client,
    ):
        await client.subscribe("covers/gw-c/cmd/response", qos=1)
        await client.publish(
            "covers/gw-c/cmd", json.dumps({"request_id": "x1", "cmd": "ping"}), qos=1
        )
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                answer = json.loads(message.payload)
                break
    assert (answer["request_id"], answer["ok"]) == ("x1", True)


async def test_a_foreign_response_topic_is_refused_on_the_default_topic(
    tmp_path: Path, broker: Broker
) -> None:
    async with (
        running(tmp_path, broker) as gateway,
        aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
    ):
        await client.subscribe("covers/gw-c/cmd/response", qos=1)
        await client.subscribe("elsewhere/#", qos=1)
        request = {
            "request_id": "f1",
            "cmd": "set_thresholds",
            "args": {"cover_id": "C-1", "thresholds": {"tilt_deg": 5}},
        }
        platform = Platform(client, reply_to="elsewhere/replies")
        correlation = uuid.uuid4().bytes
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = platform.reply_to
        props.CorrelationData = correlation
        await client.publish("covers/gw-c/cmd", json.dumps(request), qos=1, properties=props)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert str(message.topic) == "covers/gw-c/cmd/response"
                assert isinstance(message.payload, bytes)
                answer = json.loads(message.payload)
                assert message.properties is not None
                assert message.properties.CorrelationData == correlation
                break
        assert (answer["request_id"], answer["error"]["code"]) == ("f1", "refused")
        assert gateway.commands.overrides()["cover"] == {}  # not carried out


async def test_overrides_retained_audited_and_acks_reach_the_platform(
    tmp_path: Path, broker: Broker
) -> None:
    async with (
        running(tmp_path, broker) as gateway,
        aiomqtt.Client("127.0.0.1", broker.port, protocol=aiomqtt.ProtocolVersion.V5) as client,
        Collector(broker.port) as collector,
    ):
        await client.subscribe(REPLIES, qos=1)
        platform = Platform(client)
        await collector.wait_for(lambda: bool(collector.of("overrides")))
        assert collector.of("overrides")[-1]["overrides"]["cover"] == {}
        ok = await platform.ask(
            {
                "request_id": "o1",
                "cmd": "set_thresholds",
                "args": {"cover_id": "C-1", "thresholds": {"tilt_deg": 6}},
            }
        )
        assert ok["ok"]
        await collector.wait_for(
            lambda: collector.of("overrides")[-1]["overrides"]["cover"] == {"C-1": {"tilt_deg": 6}}
        )
        await collector.wait_for(lambda: bool(collector.of("event")))
        assert collector.of("event")[0]["new"] == {"tilt_deg": 6}

        gateway.submit(opened(), critical=True)
        await collector.wait_for(lambda: bool(collector.alarms()))
        alarm_id = collector.alarms()[0]["alarm_id"]
        listed = await platform.ask({"request_id": "o2", "cmd": "active_alarms"})
        assert [a["alarm_id"] for a in listed["result"]["alarms"]] == [alarm_id]
        ack = await platform.ask(
            {
                "request_id": "o3",
                "cmd": "ack_alarm",
                "args": {"alarm_id": alarm_id, "by": "dispatcher-7", "work_order": "WO-1"},
            }
        )
        assert ack["ok"]
        await collector.wait_for(
            lambda: any(a["state"] == "acknowledged" for a in collector.alarms())
        )
        cleared = await platform.ask(
            {"request_id": "o4", "cmd": "clear_thresholds", "args": {"cover_id": "C-1"}}
        )
        assert cleared["result"]["cleared"] == ["tilt_deg"]
        await collector.wait_for(lambda: collector.of("overrides")[-1]["overrides"]["cover"] == {})
    assert collector.errors == []
