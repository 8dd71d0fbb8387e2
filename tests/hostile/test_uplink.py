"""Issue 8.5, the uplink's part: a crash leaves the last will; SIGTERM ends the daemon.

A crash used to DISCONNECT cleanly, so the broker kept the retained
``online`` of a dead gateway; and the uplink could hold a stop up while the
broker was unreachable.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from firmware_sim.broker import Broker
from gateway.config import parse_config
from gateway.daemon import Gateway
from tests.harness import Collector, free_udp_port
from tests.uplink_rig import Gw, retained_status


class CrashError(Exception):
    """Some other part of the daemon fails."""


def gateway(tmp_path: Path, port: int) -> Gateway:
    data = {
        "gateway": {"id": "gw-crash", "state_dir": str(tmp_path / "state")},
        "uplink": {"host": "127.0.0.1", "port": port, "stats_interval_s": 60},
        "udp": [{"name": "nbiot", "bind": f"127.0.0.1:{free_udp_port()}"}],
    }
    return Gateway(parse_config(data, base_dir=tmp_path))


async def cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait({task})


@pytest.mark.parametrize("end", [cancel], ids=["cancelled"])
async def test_a_gateway_that_dies_leaves_its_last_will(
    tmp_path: Path, end: Callable[[asyncio.Task[None]], object]
) -> None:
    with Broker(tmp_path / "broker") as broker:
        async with Collector(broker.port) as platform:
            gw = gateway(tmp_path, broker.port)
            task = asyncio.create_task(gw.run(asyncio.Event()))
            await platform.wait_for(lambda: bool(platform.of("status")))
            assert platform.of("status")[-1]["state"] == "online"
            await end(task)  # type: ignore[misc]
            assert task.cancelled()  # the uplink let the cancellation through
            await platform.wait_for(lambda: platform.of("status")[-1]["state"] == "offline")
            status = await retained_status(broker.port, "gw-crash")
    assert status["state"] == "offline"
    assert status["reason"] == "connection lost"  # the will, not a goodbye
    assert platform.errors == []


async def test_an_error_in_another_task_leaves_the_last_will(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        async with Collector(broker.port) as platform:
            gw = gateway(tmp_path, broker.port)
            stop = asyncio.Event()

            async def failing_part() -> None:
                await platform.wait_for(lambda: bool(platform.of("status")))
                raise CrashError

            async def daemon_with_a_failing_part() -> None:
                async with asyncio.TaskGroup() as group:
                    group.create_task(gw.run(stop))
                    group.create_task(failing_part())

            with pytest.raises(ExceptionGroup) as raised:
                await daemon_with_a_failing_part()
            assert raised.group_contains(CrashError)  # type: ignore[attr-defined]
            await platform.wait_for(lambda: platform.of("status")[-1]["state"] == "offline")
            status = await retained_status(broker.port, "gw-crash")
    assert status["reason"] == "connection lost"
    assert platform.errors == []


def sigterm_exits_within(gw: Gw, seconds: float) -> int:
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    try:
        code = gw.proc.wait(seconds)
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running {seconds} s after SIGTERM:\n{gw.log_text()}")
    gw.proc = None
    assert time.monotonic() - started < seconds
    return code


def test_sigterm_ends_the_daemon_while_the_broker_never_answers(tmp_path: Path) -> None:
    with socket.socket() as hole:  # accepts the TCP connection, never answers CONNECT
        hole.bind(("127.0.0.1", 0))
        hole.listen()
        gw = Gw(tmp_path / "gw", port=hole.getsockname()[1], uplink={"publish_timeout_s": 60})
        try:
            gw.start()
            hole.settimeout(20)
            peer, _ = hole.accept()  # the daemon is connecting
            with peer:
                assert sigterm_exits_within(gw, 10) == 0
        finally:
            gw.close()


async def test_sigterm_ends_the_daemon_while_the_broker_hangs(tmp_path: Path) -> None:
    with Broker(tmp_path / "broker") as broker:
        gw = Gw(tmp_path / "gw", port=broker.port, uplink={"publish_timeout_s": 60})
        try:
            async with Collector(broker.port) as platform:
                gw.start()
                await platform.wait_for(lambda: bool(platform.of("status")), timeout=20)
            assert broker.proc is not None
            os.kill(broker.proc.pid, signal.SIGSTOP)  # alive, connected, answers nothing
            try:
                assert sigterm_exits_within(gw, 10) == 0
            finally:
                os.kill(broker.proc.pid, signal.SIGCONT)
        finally:
            gw.close()


async def test_sigterm_ends_the_daemon_while_the_broker_is_down(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "broker")
    gw = Gw(
        tmp_path / "gw",
        port=broker.port,
        uplink={"publish_timeout_s": 60, "reconnect_min_s": 30, "reconnect_max_s": 60},
    )
    broker.start()
    try:
        async with Collector(broker.port) as platform:
            gw.start()
            await platform.wait_for(lambda: bool(platform.of("status")), timeout=20)
            broker.stop()  # the daemon now waits out a long backoff
            assert sigterm_exits_within(gw, 10) == 0
    finally:
        gw.close()
        broker.stop()


def test_status_schema_reason_values_cover_the_will() -> None:
    """The will and the goodbye are the two documented ``reason`` values."""
    schema = json.loads(
        (Path(__file__).parents[2] / "gateway/schemas/status.schema.json").read_text()
    )
    assert set(schema["properties"]["reason"]["enum"]) == {"connection lost", "shutdown"}
