"""Secrets and resources (issue 8.8): no secret in any error; bounded local servers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.control import request
from tests.harness import free_port
from tests.hostile.conftest import Daemon, Launch, check_config, wait_exit, write_private

SECRET = "s3cr3t-do-not-show"


async def test_a_password_file_others_can_read_is_refused(launch: Launch, tmp_path: Path) -> None:
    secret = write_private(tmp_path / "mqtt.pass", SECRET, mode=0o644)
    gw = await launch(wait=False, uplink={"username": "gw", "password_file": str(secret)})
    code = await wait_exit(gw.proc, 30)
    checked = check_config(gw.config)
    assert code == checked.returncode == 2
    for text in (checked.stderr, gw.log_text()):
        assert "uplink.password_file:" in text
        assert "chmod 600" in text
        assert SECRET not in text


async def test_a_private_password_file_is_used(launch: Launch, tmp_path: Path) -> None:
    secret = write_private(tmp_path / "mqtt.pass", SECRET)
    gw = await launch(uplink={"username": "gw", "password_file": str(secret)})
    await gw.assert_serving()


async def test_a_numeric_password_never_reaches_an_error_or_the_broker(gw: Daemon) -> None:
    """It used to be echoed in the validation error, which a reload puts in the retained status."""
    text = gw.config.read_text(encoding="utf-8")
    gw.config.write_text(text.replace("[uplink]", "[uplink]\npassword = 987654321"), "utf-8")
    gw.signal(signal.SIGHUP)

    def refused() -> bool:
        status = [m.payload for m in gw.collector.messages if m.topic.endswith("/status")]
        return bool(status) and status[-1].get("reload", {}).get("ok") is False

    await gw.collector.wait_for(refused, timeout=15)
    status = [m.payload for m in gw.collector.messages if m.topic.endswith("/status")][-1]
    assert "uplink.password: must be a string" in status["reload"]["reason"]
    everything = json.dumps([m.payload for m in gw.collector.messages]) + gw.log_text()
    assert "987654321" not in everything
    checked = check_config(gw.config)
    assert checked.returncode == 2
    assert "987654321" not in checked.stdout + checked.stderr


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def test_a_thousand_idle_connections_change_nothing(launch: Launch) -> None:
    """Control socket and metrics: over the cap refused at once; the daemon's fds stay few."""
    port = free_port()
    gw = await launch(metrics={"enabled": True, "listen": f"127.0.0.1:{port}"})
    fds_before = open_fds(gw.proc.pid)
    sock = str(gw.state_dir / "control.sock")
    held: list[asyncio.StreamWriter] = []
    for _ in range(1000):
        _, writer = await asyncio.open_unix_connection(sock)
        held.append(writer)
    for _ in range(1000):
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        held.append(writer)
    try:
        await gw.assert_serving()
        fds_during = open_fds(gw.proc.pid)
        assert fds_during < fds_before + 16 + 8 + 10  # the two caps, and a little slack

        # Over the cap: closed at once and counted. (Exact totals are not asserted: a
        # Unix connect that meets a full backlog can look connected to asyncio without
        # ever reaching the server.)
        reply = await _status_when(
            Path(sock),
            lambda r: all(
                r["stats"]["supervision"][name]["refused_connections"] >= 500
                for name in ("control", "metrics")
            ),
        )
        assert reply["stats"]["supervision"]["control"]["clients"] <= 16
    finally:
        for writer in held:
            writer.close()
    await gw.assert_serving()


async def _status_when(sock: Path, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """A status reply that satisfies ``predicate`` (idle clients hold slots for up to 5 s)."""
    async with asyncio.timeout(60):
        while True:
            with contextlib.suppress(ConnectionError, TimeoutError, json.JSONDecodeError):
                reply = await request(sock, "status", timeout_s=2)
                if reply.get("ok") and predicate(reply):
                    return reply
            await asyncio.sleep(0.5)  # poll interval: the counters have no event to wait on
