"""Milesight NB-IoT cellular frames over real UDP and TCP sockets, at the gateway's sink."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.config import TcpConfig, UdpConfig, UdpFormat, parse_config
from gateway.drivers.base import PortState
from gateway.drivers.tcp import TcpListener
from gateway.drivers.udp import UdpListener
from gateway.observation import DeviceRef, Observation
from gateway.protocol.devices import build_nb_frame, em400
from gateway.registry import parse_registry
from tests.harness import free_port, free_udp_port

IMEI = "868508064807350"
# The spec's worked examples (section 3.4).
README_SAMPLE = bytes.fromhex(
    "020001005f0000000130313031303131303637343944313930353436393030333138363835303830363438"
    "303733353034363030343332323432313331313038393836303431323130323237303036323835370900"
    "0e01756403670b0104823b01050001"
)
HISTORY = bytes.fromhex(
    "020001006d00000501303130313031313036373439443139303534363930303331383638353038303634"
    "383037333530343630303433323234323133313130383938363034313231303232373030363238353709"
    "001c0175370367130004824c1f05000101750e0367000304820d25050000"
)
REGISTRY = f"cover_id,owner_unit,device,device_id\nW-0088,drainage,em400-mud,{IMEI}\n"


@dataclass
class Heard:
    items: list[Observation] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def sink(self, event: object, critical: bool) -> None:
        assert isinstance(event, Observation)
        self.items.append(event)
        self.arrived.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.arrived.wait(), 0.2)


def lookup(device_id: str) -> tuple[DeviceRef, str | None] | None:
    registry, _ = parse_registry(REGISTRY)
    found = registry.device(device_id)
    return None if found is None else (found[0], found[1].cover_id)


@contextlib.asynccontextmanager
async def running(driver: UdpListener | TcpListener) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(driver.run(stop))
    async with asyncio.timeout(10):
        while driver.state is not PortState.OPEN:
            await asyncio.sleep(0.01)
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_udp_frames_give_their_readings_in_order() -> None:
    heard = Heard()
    port = free_udp_port()
    config = UdpConfig("nbiot", "127.0.0.1", port, UdpFormat.MILESIGHT_NB)
    udp = UdpListener(config, heard.sink, lookup=lookup)
    stranger = build_nb_frame(em400.build_reading(distance_mm=900), imei="860000000000001")
    async with running(udp):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for datagram in (b"\x02junk", HISTORY, HISTORY, stranger, README_SAMPLE):
                s.sendto(datagram, ("127.0.0.1", port))
            await heard.wait_for(lambda: len(heard.items) == 3)
    first, second, third = heard.items
    assert {o.device for o in heard.items} == {DeviceRef("em400-mud", IMEI)}
    # History: two readings, wire order kept; the second starts at channel 0x01 again.
    assert (first.quantities.battery_pct, first.quantities.distance_mm) == (55, 8012)
    assert first.quantities.temperature_c == 1.9
    assert first.quantities.cover_displaced is True
    assert (second.quantities.battery_pct, second.quantities.distance_mm) == (14, 9485)
    assert second.quantities.cover_displaced is False
    assert (first.counter, second.counter) == (5, None)  # one frame, one counter
    assert first.link.csq == 9
    assert first.extra["nbiot"]["imsi"] == "460043224213110"
    assert (third.quantities.distance_mm, third.counter) == (315, 0)
    status = udp.status()
    assert status["frames"] == 4
    assert status["duplicates"] == 1  # the history frame sent twice
    assert status["rejected_truncated"] == 1
    assert status["unknown_device_ids"] == {"860000000000001": 1}


async def test_tcp_frames_delimited_by_their_length_even_a_byte_at_a_time() -> None:
    heard = Heard()
    port = free_port()
    config = TcpConfig("nbiot-tcp", "127.0.0.1", port, idle_timeout_s=5.0)
    tcp = TcpListener(config, heard.sink, lookup=lookup)
    later = build_nb_frame(em400.build_reading(distance_mm=250, battery_pct=50), frame_cnt=6)
    async with running(tcp):
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for byte in HISTORY + later:
            writer.write(bytes([byte]))
            await writer.drain()
        await heard.wait_for(lambda: len(heard.items) == 3)
        writer.close()
        await writer.wait_closed()
    assert [o.quantities.distance_mm for o in heard.items] == [8012, 9485, 250]
    assert tcp.status()["lost_frames"] == 0


async def test_tcp_limits_close_what_exceeds_them() -> None:
    heard = Heard()
    port = free_port()
    config = TcpConfig(
        "nbiot-tcp", "127.0.0.1", port, max_connections=2, idle_timeout_s=0.3, max_frame_bytes=200
    )
    tcp = TcpListener(config, heard.sink, lookup=lookup)
    async with running(tcp):
        # A length far beyond max_frame_bytes: closed at once, nothing buffered.
        r1, w1 = await asyncio.open_connection("127.0.0.1", port)
        w1.write(b"\x02\x00\x01\xff\xff")
        assert await asyncio.wait_for(r1.read(), 10) == b""
        # Silent connections fill the cap; one more is refused; idle ones are closed.
        quiet = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        async with asyncio.timeout(10):
            while tcp.connections < 2:
                await asyncio.sleep(0.01)
        r3, w3 = await asyncio.open_connection("127.0.0.1", port)
        assert await asyncio.wait_for(r3.read(), 10) == b""
        for reader, _ in quiet:
            assert await asyncio.wait_for(reader.read(), 10) == b""
        # After all that, a device still gets through.
        _r4, w4 = await asyncio.open_connection("127.0.0.1", port)
        w4.write(README_SAMPLE)
        await w4.drain()
        await heard.wait_for(lambda: len(heard.items) == 1)
        for w in (w1, w3, w4, *(w for _, w in quiet)):
            w.close()
    status = tcp.status()
    assert status["oversize_closed"] == 1
    assert status["refused_connections"] == 1
    assert status["idle_closed"] >= 2
    assert heard.items[0].quantities.distance_mm == 315


@pytest.mark.parametrize("fmt", ["scn1", "milesight-nb"])
def test_udp_format_is_a_config_key(fmt: str) -> None:

    data = {
        "gateway": {"id": "gw", "state_dir": "/tmp/x"},
        "udp": [{"name": "u", "bind": "127.0.0.1:5684", "format": fmt}],
        "tcp": [{"name": "t", "bind": "127.0.0.1:5685"}],
    }
    config = parse_config(data, base_dir=Path("/tmp"))
    assert config.udp[0].format.value == fmt
    assert config.tcp[0].format is UdpFormat.MILESIGHT_NB
