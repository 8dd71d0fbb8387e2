"""The shipped ACL, as is, in a real Mosquitto: commands work, nothing else is allowed.

The broker runs ``deploy/mosquitto-acl.example`` unchanged, with a password
file made by ``mosquitto_passwd``. Refusals are proven at the far end: a
refused publish is followed, on the same connection, by an allowed one, and
when the allowed one has arrived the refused one would have arrived before it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
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
from tests.harness import VALIDATORS

ACL = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto-acl.example"
PASSWD = shutil.which("mosquitto_passwd")
USERS = {
    "gw-a": "pw-a",
    "gw-b": "pw-b",
    "platform": "pw-platform",
    "stranger": "pw-stranger",
}

pytestmark = pytest.mark.skipif(PASSWD is None, reason="mosquitto_passwd is not installed")


@pytest.fixture
def broker(tmp_path: Path) -> Broker:
    passwd = tmp_path / "passwd"
    passwd.touch(mode=0o600)
    for user, password in USERS.items():
        subprocess.run([PASSWD, "-b", str(passwd), user, password], check=True)
    broker = Broker(tmp_path / "broker")
    broker.conf.write_text(
        broker.conf.read_text().replace("allow_anonymous true\n", "allow_anonymous false\n")
        + f"password_file {passwd}\nacl_file {ACL}\n"
    )
    return broker


def client(broker: Broker, user: str, password: str | None = None) -> aiomqtt.Client:
    return aiomqtt.Client(
        "127.0.0.1",
        broker.port,
        username=user,
        password=USERS.get(user, "") if password is None else password,
        identifier=f"{user}-{uuid.uuid4().hex[:6]}",
        protocol=aiomqtt.ProtocolVersion.V5,
    )


@asynccontextmanager
async def gateway(tmp_path: Path, broker: Broker, gateway_id: str) -> AsyncIterator[Gateway]:
    data = {
        "gateway": {"id": gateway_id, "state_dir": str(tmp_path / gateway_id)},
        "uplink": {
            "host": "127.0.0.1",
            "port": broker.port,
            "username": gateway_id,
            "password": USERS[gateway_id],
        },
    }
    gw = Gateway(parse_config(data, base_dir=tmp_path))
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:
        yield gw
    finally:
        stop.set()
        await task


async def answer(
    platform: aiomqtt.Client, gateway_id: str, request: dict[str, Any], timeout: float = 2.0
) -> dict[str, Any]:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = f"covers/{gateway_id}/platform/response"
    props.CorrelationData = request["request_id"].encode()
    await platform.publish(f"covers/{gateway_id}/cmd", json.dumps(request), qos=1, properties=props)
    async with asyncio.timeout(timeout):
        async for message in platform.messages:
            assert isinstance(message.payload, bytes)
            body: dict[str, Any] = json.loads(message.payload)
            if (
                str(message.topic).endswith("/response")
                and body["request_id"] == request["request_id"]
            ):
                assert list(VALIDATORS["response"].iter_errors(body)) == []
                return body
    raise AssertionError("no answer")  # pragma: no cover


async def attempt(broker: Broker, user: str, topic: str, payload: str) -> None:
    """Publish as ``user``; a broker that refuses may drop the connection, which is fine."""
    try:
        async with client(broker, user) as c:
            await c.publish(topic, payload, qos=1)
    except aiomqtt.MqttError:
        pass


async def first_of(subscriber: aiomqtt.Client, marker: str) -> list[tuple[str, bytes]]:
    """What the subscriber received before ``marker`` (published last, so arriving last)."""
    before: list[tuple[str, bytes]] = []
    async with asyncio.timeout(5):
        async for message in subscriber.messages:
            if str(message.topic) == marker:
                return before
            assert isinstance(message.payload, bytes)
            before.append((str(message.topic), message.payload))
    raise AssertionError("marker not received")  # pragma: no cover


async def answered_after(
    platform: aiomqtt.Client, gateway_id: str, request: dict[str, Any]
) -> list[tuple[str, Any]]:
    """Everything the platform receives until the answer to ``request``: (topic, an id)."""
    await platform.publish(f"covers/{gateway_id}/cmd", json.dumps(request), qos=1)
    seen: list[tuple[str, Any]] = []
    async with asyncio.timeout(5):
        async for message in platform.messages:
            assert isinstance(message.payload, bytes)
            body = json.loads(message.payload)
            seen.append((str(message.topic), body.get("request_id", body.get("msg_id"))))
            if seen[-1] == (f"covers/{gateway_id}/cmd/response", request["request_id"]):
                return seen
    raise AssertionError("no answer")  # pragma: no cover


async def until_answered(platform: aiomqtt.Client, gateway_id: str) -> None:
    """The gateway is connected and subscribed (a command before that is not delivered)."""
    for attempt in range(30):
        try:
            await answer(platform, gateway_id, {"request_id": f"ready-{attempt}", "cmd": "ping"}, 1)
        except TimeoutError:
            continue
        return
    raise AssertionError(f"{gateway_id} never answered")


async def test_the_shipped_acl_lets_the_platform_command_and_nothing_more(
    tmp_path: Path, broker: Broker
) -> None:
    with broker:
        async with (
            gateway(tmp_path, broker, "gw-a"),
            gateway(tmp_path, broker, "gw-b"),
            client(broker, "platform") as platform,
        ):
            await platform.subscribe("covers/#", qos=1)
            await until_answered(platform, "gw-a")
            await until_answered(platform, "gw-b")

            # The platform's commands are carried out and answered (on a response topic
            # under the gateway's root, which the gateway may write and the platform read).
            pong = await answer(platform, "gw-a", {"request_id": "p1", "cmd": "ping"})
            assert pong["ok"]
            status = await answer(platform, "gw-b", {"request_id": "p2", "cmd": "status"})
            assert status["gateway"] == "gw-b"

            # A gateway cannot read another gateway's commands (the subscription is granted,
            # nothing is delivered) ...
            async with client(broker, "gw-a") as rogue:
                await rogue.subscribe("covers/gw-b/cmd", qos=1)
                await rogue.subscribe("covers/gw-a/cmd", qos=1)
                await platform.publish("covers/gw-b/cmd", b'{"request_id": "y"}', qos=1)
                await platform.publish("covers/gw-a/cmd", b'{"request_id": "z"}', qos=1)
                assert await first_of(rogue, "covers/gw-a/cmd") == []
            # ... nor publish under another's root (Mosquitto 2.0 drops such a client).
            fake = json.dumps({"msg_id": "forged", "kind": "cover_open"})
            await attempt(broker, "gw-a", "covers/gw-b/alarm", fake)
            await attempt(broker, "gw-a", "covers/gw-b/cmd", '{"request_id": "x"}')
            await attempt(broker, "gw-a", "covers/gw-a/marker", "{}")  # its own root: allowed
            before = await first_of(platform, "covers/gw-a/marker")
            assert ("covers/gw-b/alarm", fake.encode()) not in before
            assert ("covers/gw-b/cmd", b'{"request_id": "x"}') not in before

            # Without valid credentials nobody connects; a valid account that is no gateway
            # of ours (the patterns give it covers/<its name>/ only) reaches no gateway.
            for user, password in (("platform", "wrong"), ("nobody", "pw"), (None, None)):
                with pytest.raises(aiomqtt.MqttError):
                    async with aiomqtt.Client(
                        "127.0.0.1", broker.port, username=user, password=password
                    ):
                        pass
            async with client(broker, "stranger") as stranger:
                await stranger.subscribe("covers/#", qos=1)
                await stranger.subscribe("covers/stranger/cmd", qos=1)
                await platform.publish("covers/gw-a/cmd", b'{"request_id": "w"}', qos=1)
                await platform.publish("covers/stranger/cmd", b"{}", qos=1)
                assert await first_of(stranger, "covers/stranger/cmd") == []
            await attempt(
                broker, "stranger", "covers/gw-a/cmd", '{"request_id": "s1", "cmd": "ping"}'
            )
            await attempt(broker, "stranger", "covers/gw-a/alarm", fake)
            # Handled in order: had the stranger's publishes been delivered, they (and the
            # answer to its command) would reach the platform before the answer to this one.
            seen = await answered_after(platform, "gw-a", {"request_id": "p3", "cmd": "ping"})
            assert ("covers/gw-a/alarm", "forged") not in seen
            assert all(rid != "s1" for _, rid in seen)
