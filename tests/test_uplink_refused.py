"""A publish the broker refuses (MQTT 5 PUBACK ≥ 0x80) is not counted as sent.

Mosquitto with an ACL that lets the gateway write only its status and stats:
the alarm is refused (0x87 not authorized), stays in the queue and the stats
say why; given a permissive ACL, the broker gets the alarm on the same connection.
"""

from __future__ import annotations

import signal
from pathlib import Path

from firmware_sim.broker import Broker
from gateway.buffer.queue import Lane
from gateway.protocol.messages import EventCode
from tests.harness import Collector
from tests.uplink_rig import Gw

DENY = """\
topic read covers/#
user gw-test
topic write covers/gw-test/status
topic write covers/gw-test/stats
topic read covers/gw-test/cmd
"""
ALLOW = """\
topic read covers/#
user gw-test
topic readwrite covers/gw-test/#
"""


def conf(broker: Broker, acl: Path) -> str:
    return (
        f"listener {broker.port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence true\n"
        f"persistence_location {broker.workdir}/\n"
        f"acl_file {acl}\n"
    )


async def test_refused_alarm_stays_queued_until_the_broker_accepts_it(tmp_path: Path) -> None:
    acl = tmp_path / "acl"
    acl.write_text(DENY)
    broker = Broker(tmp_path / "broker")
    broker.conf.write_text(broker.conf.read_text().split("\n", 1)[0] + "\n" + conf(broker, acl))
    gw = Gw(tmp_path / "gw", port=broker.port, uplink={"username": "gw-test", "protocol": "5"})
    broker.start()
    try:
        async with Collector(broker.port) as platform:
            gw.start()
            await platform.wait_for(lambda: bool(platform.of("status")), timeout=20)
            gw.event(EventCode.COVER_OPENED)

            def refused() -> bool:
                return any(
                    s["uplink"].get("problem") == "uplink refused: not authorized"
                    for s in platform.of("stats")
                )

            await platform.wait_for(refused, timeout=20)
            stats = [s for s in platform.of("stats") if s["uplink"].get("problem")][-1]
            assert stats["uplink"]["refused"]["not authorized"] >= 1
            assert stats["queue"]["depth_alarm"] >= 1  # kept, as in an outage
            assert platform.alarms() == []
            assert (Lane.ALARM, "covers/gw-test/alarm") in gw.queued()

            # The operator fixes the ACL; Mosquitto re-reads it on SIGHUP. (A restart
            # would do too, but Mosquitto 2.0 with an acl_file drops what arrives for
            # a persistent subscriber restored from disk before it reconnects.)
            acl.write_text(ALLOW)
            assert broker.proc is not None
            broker.proc.send_signal(signal.SIGHUP)
            await platform.wait_for(
                lambda: any(a["kind"] == "cover_open" for a in platform.alarms()), timeout=30
            )
            await platform.wait_for(
                lambda: not any(lane == Lane.ALARM for lane, _ in gw.queued()), timeout=10
            )
            assert gw.stop() == 0
            log = gw.log_text()
            assert log.count("the broker refuses our") == 1, log  # once per reason
            assert platform.errors == []
    finally:
        gw.close()
        broker.stop()
