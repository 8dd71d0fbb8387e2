"""Supervised tasks and clean ends (issue 8.5), against the real daemon and a real broker."""

from __future__ import annotations

from tests.hostile.conftest import Daemon


async def test_the_frame_serves_and_sigterm_ends_it(gw: Daemon) -> None:
    await gw.assert_serving()
    assert await gw.stop() == 0
    status = [m.payload for m in gw.collector.messages if m.topic.endswith("/status")]
    assert status[-1]["state"] == "offline"
