"""Ingress you can trust (issue 8.1, ingress part): UDP sources allowed and rate limited.

Attacks come from other loopback addresses (127.0.0.2, 127.0.0.3): as far as
the daemon can tell, other hosts. The probe that proves the daemon serves uses
the radio.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.control import request
from gateway.drivers.ingress import SourceGate, Verdict, parse_networks
from gateway.protocol.codec import encode_frame
from gateway.protocol.messages import Event, EventCode, Frame, FrameFlags, MessageType, Tilt
from tests.hostile.conftest import NODE_ID, Daemon, Launch
from tests.strategies import frames

FORGED_SEQ = 40_000  # far from the probe's own sequence numbers


def forged_open(seq: int = FORGED_SEQ, node: int = NODE_ID) -> bytes:
    """A well-formed "cover opened" for the registered cover: SCN-1 has only a CRC."""
    frame = Frame(
        node,
        seq,
        MessageType.EVENT,
        FrameFlags.NODE_ALARM,
        (Event(EventCode.COVER_OPENED, 0, 6000), Tilt(60.0, 0.0)),
    )
    return encode_frame(frame)


def from_udp(gw: Daemon) -> list[dict[str, Any]]:
    """Every alarm and reading at the broker that came in through the UDP input."""
    alarms = [a for a in gw.collector.alarms() if a["source"].get("port") == "nbiot0"]
    readings = [r for r in gw.collector.readings() if r["source"].get("port") == "nbiot0"]
    return alarms + readings


async def port_status(gw: Daemon) -> dict[str, Any]:
    reply = await request(gw.state_dir / "control.sock", "status")
    ports: dict[str, Any] = reply["stats"]["ports"]
    return dict(ports["nbiot0"])


async def test_a_source_outside_allow_changes_nothing_at_the_broker(launch: Launch) -> None:
    gw = await launch(udp={"allow": ["127.0.0.1/32"]})
    for seq in range(FORGED_SEQ, FORGED_SEQ + 20):
        gw.send_udp(forged_open(seq), source="127.0.0.2")
    await gw.assert_serving()  # the real alarm, sent after the forgeries, arrives
    assert from_udp(gw) == []
    status = await port_status(gw)
    assert status["dropped_not_allowed"] == 20
    assert status["frames"] == 0

    # Inside allow: heard. (Another node: the registered one is bound to the radio it
    # was first heard on, so its frames from any other input are refused anyway.)
    gw.send_udp(forged_open(FORGED_SEQ + 100, node=0x0BAD0002), source="127.0.0.1")
    await gw.collector.wait_for(lambda: bool(from_udp(gw)), timeout=10)


async def test_one_source_flooding_is_rate_limited_and_counted(launch: Launch) -> None:
    gw = await launch(udp={"source_rate": 1.0, "source_burst": 5})
    for seq in range(200):
        report = Frame(0x0BAD0001, seq, MessageType.REPORT, FrameFlags.NONE, (Tilt(0.0, 0.0),))
        gw.send_udp(encode_frame(report), source="127.0.0.3")
    await gw.assert_serving()
    status = await port_status(gw)
    assert status["dropped_rate_limited"] >= 190
    assert status["frames"] <= 10
    readings = [r for r in gw.collector.readings() if r["source"].get("node") == "0BAD0001"]
    assert len(readings) <= 10


async def test_arbitrary_bytes_at_the_udp_input_never_stop_the_daemon(gw: Daemon) -> None:
    loop = asyncio.get_running_loop()

    def pinged() -> None:
        answer = asyncio.run_coroutine_threadsafe(gw.ping(), loop).result(timeout=30)
        assert answer["result"] == {"pong": True}

    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(
        st.one_of(
            st.binary(max_size=600),
            frames.map(encode_frame),
            st.tuples(frames.map(encode_frame), st.integers(0, 200), st.integers(0, 255)).map(
                lambda t: t[0][: t[1]] + bytes([t[2]]) + t[0][t[1] + 1 :]
            ),
        )
    )
    def case(datagram: bytes) -> None:
        gw.send_udp(datagram, source="127.0.0.4")
        pinged()

    await asyncio.to_thread(case)
    await gw.assert_serving()


def test_the_gate_keeps_its_table_bounded_and_refills() -> None:
    now = [0.0]
    gate = SourceGate(
        parse_networks(["10.0.0.0/8", "::1"]),
        rate=2.0,
        burst=3,
        max_sources=100,
        clock=lambda: now[0],
    )
    assert gate.admit("192.0.2.1") is Verdict.NOT_ALLOWED
    assert gate.admit("::ffff:10.1.2.3") is Verdict.ADMIT  # dual-stack view of an IPv4 sender
    assert [gate.admit("10.0.0.1") for _ in range(4)][-1] is Verdict.RATE_LIMITED
    now[0] += 0.5  # one token back
    assert gate.admit("10.0.0.1") is Verdict.ADMIT
    for i in range(10_000):
        gate.admit(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}")
    assert gate.sources == 100
    assert gate.stats.sources_forgotten >= 9_900
    assert gate.stats.dropped_not_allowed == 1
