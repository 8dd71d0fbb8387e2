"""Supervised tasks and clean ends (issue 8.5): the real daemon, a real broker, real faults."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.daemon_main import EXIT_START
from gateway.protocol.codec import encode_frame
from gateway.protocol.messages import Frame, FrameFlags, MessageType, Tilt
from gateway.supervisor import Supervisor
from tests.hostile.conftest import COVER_ID, NODE_ID, Daemon, Launch, wait_exit


async def test_the_frame_serves_and_sigterm_ends_it(gw: Daemon) -> None:
    await gw.assert_serving()
    assert await gw.stop() == 0
    status = [m.payload for m in gw.collector.messages if m.topic.endswith("/status")]
    assert status[-1]["state"] == "offline"


@pytest.fixture
def udp_taken() -> Iterator[int]:
    """A UDP port some other program holds."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


async def test_udp_port_in_use_ends_the_start_at_once_with_one_clear_line(
    launch: Launch, udp_taken: int
) -> None:
    started = time.monotonic()
    gw = await launch(wait=False, udp={"bind": f"127.0.0.1:{udp_taken}"})
    code = await wait_exit(gw.proc, 10)
    log = gw.log_text()
    assert code == EXIT_START, log
    assert time.monotonic() - started < 10
    assert f"cannot start: ports: udp nbiot0: cannot bind 127.0.0.1:{udp_taken}" in log
    assert "Address already in use" in log
    assert "Traceback" not in log


async def test_state_dir_that_cannot_be_written_ends_the_start(
    launch: Launch, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the state dir should be")
    gw = await launch(wait=False, gateway={"state_dir": str(blocker / "state")})
    code = await wait_exit(gw.proc, 10)
    log = gw.log_text()
    assert code == EXIT_START, log
    assert "cannot start: gateway.state_dir:" in log
    assert "not writable" in log
    assert "Traceback" not in log


class SilentBroker:
    """A TCP port that accepts connections and never answers: an uplink stuck mid-connect."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def silent_broker() -> Iterator[SilentBroker]:
    broker = SilentBroker()
    yield broker
    broker.close()


async def test_sigterm_while_serving_with_a_control_client_streaming(gw: Daemon) -> None:
    reader, writer = await asyncio.open_unix_connection(str(gw.state_dir / "control.sock"))
    writer.write(b'{"cmd": "tail"}\n')
    await writer.drain()
    line = b""
    async with asyncio.timeout(10):
        while not line:  # reports until the stream shows one: it is live
            gw.send_radio_report()
            with contextlib.suppress(TimeoutError):
                line = await asyncio.wait_for(reader.readline(), 0.5)
    started = time.monotonic()
    assert await gw.stop() == 0
    assert time.monotonic() - started < 10
    writer.close()


async def test_sigterm_under_a_udp_flood(launch: Launch) -> None:
    gw = await launch(udp={"source_rate": 100_000.0, "source_burst": 1_000_000})
    flooding = threading.Event()
    done = threading.Event()

    def flood() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.5", 0))
            seq = 0
            while not done.is_set():
                frame = Frame(
                    0x0F100D00 + seq % 5000,
                    seq % 65536,
                    MessageType.REPORT,
                    FrameFlags.NONE,
                    (Tilt(1.0, 2.0),),
                )
                s.sendto(encode_frame(frame), ("127.0.0.1", gw.udp_port))
                seq += 1
                if seq == 2000:
                    flooding.set()

    sender = threading.Thread(target=flood, daemon=True)
    sender.start()
    try:
        await asyncio.to_thread(flooding.wait, 30)
        started = time.monotonic()
        code = await gw.stop()
        assert time.monotonic() - started < 10
        assert code == 0, gw.log_text()
    finally:
        done.set()
        sender.join(10)


async def test_sigterm_right_after_start(launch: Launch) -> None:
    gw = await launch(wait=False)
    started = time.monotonic()
    gw.signal(signal.SIGTERM)
    code = await wait_exit(gw.proc, 10)
    assert code in (0, -signal.SIGTERM), gw.log_text()  # before its handlers: the default one
    assert time.monotonic() - started < 10


async def test_sigterm_while_the_broker_is_down(launch: Launch) -> None:
    gw = await launch()
    gw.broker.stop()
    started = time.monotonic()
    assert await gw.stop() == 0
    assert time.monotonic() - started < 10


async def test_sigterm_while_the_uplink_is_stuck_mid_connect(
    launch: Launch, silent_broker: SilentBroker
) -> None:
    gw = await launch(wait=False, uplink={"port": silent_broker.port, "publish_timeout_s": 60})
    await gw.wait_log("running as")
    started = time.monotonic()
    code = await gw.stop()
    assert time.monotonic() - started < 10
    assert code == 0, gw.log_text()


async def test_sighup_with_a_gbk_registry_keeps_the_old_one_and_says_why(gw: Daemon) -> None:
    registry = gw.config.parent / "covers.csv"
    registry.write_bytes(
        f"cover_id,owner_unit,node_id,address\n{COVER_ID},排水,{NODE_ID:08X},文三路\n".encode("gbk")
    )
    gw.signal(signal.SIGHUP)

    def refused() -> bool:
        status = [m.payload for m in gw.collector.messages if m.topic.endswith("/status")]
        return bool(status) and status[-1].get("reload", {}).get("ok") is False

    await gw.collector.wait_for(refused, timeout=15)
    status = [m.payload for m in gw.collector.messages if m.topic.endswith("/status")][-1]
    assert status["state"] == "online"
    assert "gateway.registry" in status["reload"]["reason"]
    assert "not UTF-8" in status["reload"]["reason"]
    await gw.assert_serving()  # alive, and the cover is still known by its id
    assert gw.collector.errors == []


async def test_reload_command_with_a_gbk_registry_is_answered_and_refused(gw: Daemon) -> None:
    registry = gw.config.parent / "covers.csv"
    registry.write_bytes(
        f"cover_id,owner_unit,node_id\n{COVER_ID},排水,{NODE_ID:08X}\n".encode("gbk")
    )
    answer = await gw.command({"cmd": "reload"})
    assert answer["ok"] is False
    assert "gateway.registry" in answer["error"]["message"]
    await gw.assert_serving()  # and the next command is served: assert_serving pings


async def test_a_failing_part_is_restarted_and_counted_while_the_others_run_on() -> None:
    supervisor = Supervisor(restart_min_s=0.01, restart_max_s=0.05)
    stop = asyncio.Event()
    runs = 0
    ticks = 0

    async def flaky(stop: asyncio.Event) -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise RuntimeError(f"bug number {runs}")
        await stop.wait()

    async def steady(stop: asyncio.Event) -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(supervisor.run("flaky", flaky, stop))
        tasks.create_task(supervisor.run("steady", steady, stop))
        async with asyncio.timeout(10):
            while runs < 4:
                await asyncio.sleep(0.01)
        before = ticks
        async with asyncio.timeout(10):
            while ticks == before:
                await asyncio.sleep(0.01)
        stop.set()
    assert supervisor.stats()["flaky"] == {
        "restarts": 3,
        "last_error": "RuntimeError: bug number 3",
    }
    assert supervisor.stats()["steady"]["restarts"] == 0


async def test_supervision_never_swallows_cancellation() -> None:
    supervisor = Supervisor(restart_min_s=0.01, restart_max_s=0.05)
    entered = asyncio.Event()

    async def body(stop: asyncio.Event) -> None:
        entered.set()
        await asyncio.Event().wait()

    task = asyncio.create_task(supervisor.run("part", body, asyncio.Event()))
    await entered.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert supervisor.stats()["part"]["restarts"] == 0
