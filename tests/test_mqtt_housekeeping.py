"""paho's keepalive housekeeping, run when it falls due rather than every second."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim.broker import Broker
from gateway.mqtt_client import MISC_MAX_S, MISC_MIN_S, UplinkClient, misc_due_in


def _paho(keepalive: int, out: float, heard: float, ping: float) -> mqtt.Client:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client._keepalive = keepalive
    client._last_msg_out = out
    client._last_bytes_received = heard
    client._ping_t = ping
    return client


@given(
    st.integers(5, 3600),
    st.floats(0, 4000),
    st.floats(0, 4000),
    st.one_of(st.just(0.0), st.floats(1, 4000)),
    st.floats(0, 8000),
)
def test_housekeeping_is_due_at_the_first_keepalive_deadline(
    keepalive: int, out: float, heard: float, ping: float, now: float
) -> None:
    wait = misc_due_in(_paho(keepalive, out, heard, ping), now)
    assert MISC_MIN_S <= wait <= MISC_MAX_S
    deadlines = [out + keepalive, heard + keepalive] + ([ping + keepalive] if ping else [])
    first = min(deadlines)
    assert now + wait >= min(first, now + MISC_MIN_S)  # never before anything is due
    assert now + wait <= max(first + MISC_MIN_S, now + MISC_MIN_S) or wait == MISC_MAX_S


def test_no_keepalive_means_nothing_to_do() -> None:
    assert misc_due_in(_paho(0, 0.0, 0.0, 0.0), 100.0) == MISC_MAX_S


async def test_an_idle_connection_pings_and_stays_up(tmp_path: Path) -> None:
    """Keepalive 1 s, nothing published: PINGREQs go out at their deadlines, the broker
    answers each, and the connection is still there to publish on."""
    logger = logging.getLogger("tests.mqtt.housekeeping")
    logger.setLevel(logging.DEBUG)
    answered = 0
    enough = asyncio.Event()

    class Pings(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            nonlocal answered
            if "PINGRESP" in record.getMessage():
                answered += 1
                if answered >= 3:
                    enough.set()

    handler = Pings()
    logger.addHandler(handler)
    try:
        with Broker(tmp_path / "broker") as broker:
            async with UplinkClient("127.0.0.1", broker.port, keepalive=1, logger=logger) as c:
                await asyncio.wait_for(enough.wait(), 15)
                await c.publish_acked("t/alive", b"1", qos=1)
    finally:
        logger.removeHandler(handler)
    assert answered >= 3


@pytest.mark.parametrize("attr", ["_last_msg_out", "_last_bytes_received", "_ping_t"])
def test_another_paho_falls_back_to_every_second(attr: str) -> None:
    client = _paho(60, 0.0, 0.0, 0.0)
    setattr(client, attr, None)
    assert misc_due_in(client, 10.0) == 1.0
