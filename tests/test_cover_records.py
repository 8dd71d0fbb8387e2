"""Compact encodings: cover records retained on topics of their own, joined by the platform."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import unquote

import aiomqtt
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim.broker import Broker
from gateway.config import load_config
from gateway.cover_records import cover_topic
from gateway.daemon import Gateway
from gateway.daemon_main import serve
from gateway.events import FrameHeard
from gateway.protocol.framing import Received
from gateway.protocol.messages import Battery, Frame, FrameFlags, MessageType, Tilt, WaterDepth
from tests.harness import Collector

ODD = "C/4 +#%"  # every character a topic level must not carry as it is


@given(st.text(min_size=1, max_size=40))
def test_a_cover_topic_is_one_level_and_names_the_cover(cover_id: str) -> None:
    topic = cover_topic("covers/gw", cover_id)
    assert topic.startswith("covers/gw/cover/")
    level = topic.removeprefix("covers/gw/cover/")
    assert not set(level) & {"/", "+", "#", "\0"}
    assert unquote(level) == cover_id


def write_config(path: Path, port: int, encoding: str) -> None:
    path.write_text(
        f'[gateway]\nid = "gw-c"\nstate_dir = "{path.parent}/state"\nregistry = "covers.csv"\n'
        f'[uplink]\nhost = "127.0.0.1"\nport = {port}\ntelemetry_encoding = "{encoding}"\n'
    )


def report(node: int, seq: int) -> FrameHeard:
    records = (Tilt(0.3, -0.2), WaterDepth(1800), Battery(3600))
    frame = Frame(node, seq, MessageType.REPORT, FrameFlags.NONE, records)
    return FrameHeard("lora0", 0.0, Received(frame, b""))


async def retained_records(port: int) -> dict[str, bytes]:
    """What a platform that subscribes now is given: the retained records, by cover id."""
    found: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe("covers/gw-c/cover/+", qos=1)
        # The broker sends the retained records on the first SUBACK, before it reads on.
        await client.subscribe("probe/end", qos=1)
        await client.publish("probe/end", b"end", qos=1)
        async for message in client.messages:
            if str(message.topic) == "probe/end":
                return found
            assert message.retain
            assert isinstance(message.payload, bytes)
            found[unquote(str(message.topic).rsplit("/", 1)[1])] = message.payload
    return found


async def test_records_go_once_retained_and_follow_the_registry_on_reload(
    tmp_path: Path,
) -> None:
    covers = tmp_path / "covers.csv"
    header = "cover_id,owner_unit,address,node_id\n"
    covers.write_text(
        header + "C-1,drainage,文三路,00C00001\nC-2,gas,,00C00002\nC-3,gas,,00C00003\n"
        f"{ODD},drainage,,00C00004\n",
        encoding="utf-8",
    )
    config = tmp_path / "gw.toml"
    with Broker(tmp_path / "broker") as broker:
        write_config(config, broker.port, "cbor")
        async with Collector(broker.port) as collector:
            gateway = Gateway(load_config(config), config_path=config)
            stop = asyncio.Event()
            task = asyncio.create_task(serve(gateway, stop))
            await collector.wait_for(lambda: bool(collector.of("status")))
            for seq in (1, 2):
                for node in (0x00C00001, 0x00C00002, 0x00C00004):
                    gateway.submit(report(node, seq), critical=False)
            await collector.wait_for(lambda: len(collector.readings()) == 6)
            first = collector.readings()

            covers.write_text(  # C-1 moves, C-2 leaves, C-3 and the odd one stay as they were
                header + "C-1,drainage,文二路,00C00001\nC-3,gas,,00C00003\n"
                f"{ODD},drainage,,00C00004\n",
                encoding="utf-8",
            )
            gateway.request_reload()
            await collector.wait_for(
                lambda: (
                    collector.records.get("C-2", {}) is None
                    and (collector.records["C-1"] or {}).get("address") == "文二路"
                )
            )
            retained = await retained_records(broker.port)
            stop.set()
            await task
    assert collector.errors == []  # batches and records match their schemas
    assert all("covers" not in b for b in collector.of("telemetry"))  # ids only, no records
    assert {r["cover_id"]: r["cover"]["address"] for r in first} == {
        "C-1": "文三路",
        "C-2": "",
        ODD: "",
    }
    levels = [m.topic.split("/") for m in collector.messages]
    sent = [unquote(t[3]) for t in levels if t[2] == "cover"]
    # Once each on the connection, C-1 again after its change, C-2 cleared; C-3 never needed.
    assert sorted(sent) == sorted(["C-1", "C-2", ODD, "C-1", "C-2"])
    assert set(retained) == {"C-1", ODD}  # C-2's retained record is gone
    assert "文二路".encode() in retained["C-1"]


async def test_json_batches_carry_their_records_and_publish_none(tmp_path: Path) -> None:
    (tmp_path / "covers.csv").write_text(
        "cover_id,owner_unit,address,node_id\nC-1,drainage,文三路,00C00001\n", encoding="utf-8"
    )
    config = tmp_path / "gw.toml"
    with Broker(tmp_path / "broker") as broker:
        write_config(config, broker.port, "json")
        async with Collector(broker.port) as collector:
            gateway = Gateway(load_config(config), config_path=config)
            stop = asyncio.Event()
            task = asyncio.create_task(serve(gateway, stop))
            await collector.wait_for(lambda: bool(collector.of("status")))
            gateway.submit(report(0x00C00001, 1), critical=False)
            await collector.wait_for(lambda: len(collector.readings()) == 1)
            stop.set()
            await task
    assert collector.errors == []
    assert collector.records == {}
    assert collector.of("telemetry")[0]["covers"]["C-1"]["address"] == "文三路"


async def test_records_go_again_only_to_a_broker_that_lost_the_session(tmp_path: Path) -> None:
    """A broker restarted with its state keeps the records: none are sent again. One
    that lost its state (persistence file gone) has them again before the next batch."""
    (tmp_path / "covers.csv").write_text(
        "cover_id,owner_unit,node_id\nC-1,drainage,00C00001\n", encoding="utf-8"
    )
    config = tmp_path / "gw.toml"
    node = 0x00C00001

    async def delivered(gateway: Gateway, readings: int) -> None:
        """Until the broker has acknowledged READINGS readings in all."""
        assert gateway.uplink is not None
        async with asyncio.timeout(30):
            while gateway.uplink.stats.published_rows < readings:
                await asyncio.sleep(0.05)

    broker = Broker(tmp_path / "broker")
    with broker:
        write_config(config, broker.port, "cbor")
        async with Collector(broker.port) as collector:
            gateway = Gateway(load_config(config), config_path=config)
            stop = asyncio.Event()
            task = asyncio.create_task(serve(gateway, stop))
            gateway.submit(report(node, 1), critical=False)
            await collector.wait_for(lambda: len(collector.readings()) == 1)
            assert gateway.uplink is not None
            records = gateway.uplink.cover_records
            assert records is not None
            assert collector.records["C-1"] is not None
            assert records.published == 1

            broker.stop()  # Mosquitto saves sessions and retained messages: both kept
            broker.start()
            gateway.submit(report(node, 2), critical=False)
            await collector.wait_for(lambda: len(collector.readings()) == 2)
            assert gateway.uplink.stats.reconnects >= 1
            assert records.published == 1  # the broker still had it
            kept = await retained_records(broker.port)

            broker.stop()
            (tmp_path / "broker" / "mosquitto.db").unlink()  # everything lost
            broker.start()
            assert "C-1" not in await retained_records(broker.port)
            gateway.submit(report(node, 3), critical=False)
            await delivered(gateway, 3)
            retained = await retained_records(broker.port)
            stop.set()
            await task
    assert collector.errors == []
    assert records.published == 2
    assert b'"owner_unit":"drainage"' in kept["C-1"]
    assert retained["C-1"] == kept["C-1"]


async def test_a_cover_removed_while_the_gateway_was_stopped_is_cleared_at_its_next_start(
    tmp_path: Path,
) -> None:
    """The registry changed while the gateway was down: the next start clears the
    removed cover's retained record without a reading to prompt it, and the start
    after that has nothing left to clear."""
    covers = tmp_path / "covers.csv"
    header = "cover_id,owner_unit,node_id\n"
    covers.write_text(header + "C-1,drainage,00C00001\nC-2,gas,00C00002\n", encoding="utf-8")
    config = tmp_path / "gw.toml"
    cleared: list[int] = []

    async def run(collector: Collector, *, readings: int = 0) -> None:
        """One life of the gateway: online, READINGS reports delivered, stopped."""
        stats = len(collector.of("stats"))
        gateway = Gateway(load_config(config), config_path=config)
        stop = asyncio.Event()
        task = asyncio.create_task(serve(gateway, stop))
        for node in range(readings):
            gateway.submit(report(0x00C00001 + node, 1), critical=False)
        # Its first stats go out after the housekeeping round that clears what is owed.
        await collector.wait_for(lambda: len(collector.of("stats")) > stats)
        await collector.wait_for(lambda: len(collector.readings()) >= readings)
        assert gateway.uplink is not None
        assert gateway.uplink.cover_records is not None
        cleared.append(gateway.uplink.cover_records.cleared)
        stop.set()
        await task

    with Broker(tmp_path / "broker") as broker:
        write_config(config, broker.port, "cbor")
        async with Collector(broker.port) as collector:
            await run(collector, readings=2)
            before = await retained_records(broker.port)
            covers.write_text(header + "C-1,drainage,00C00001\n", encoding="utf-8")
            await run(collector)
            after = await retained_records(broker.port)
            await run(collector)
    assert collector.errors == []
    assert set(before) == {"C-1", "C-2"}
    assert set(after) == {"C-1"}  # C-2's retained record is gone
    assert collector.records["C-2"] is None  # cleared, as the platform saw it
    assert cleared == [0, 1, 0]
