"""A platform's alarm consumer for the suite: a process of its own, on a session of its own.

docs/mqtt-api.md ("Order") tells a platform to take alarms on a session of
their own: the broker delivers a session's messages in order, so a reader of
every topic that falls behind a draining backlog reads each alarm behind the
telemetry it has not read yet. ``bench_suite.py`` reads every topic in one
Python process; this one takes only ``<root>/<gw>/alarm``, in another process
so the suite's own decoding of telemetry cannot delay it either.

    python scripts/bench_alarm_session.py PORT

Prints ``READY`` once subscribed, then one line per raised alarm: the node
and ``time.perf_counter()`` at arrival (CLOCK_MONOTONIC on Linux, the same
clock in every process, so the suite subtracts its own send times).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import paho.mqtt.client as mqtt


def raised_node(payload: bytes) -> str | None:
    """The node an alarm message names, if it says ``raised`` (the suite's reader uses it too)."""
    body = json.loads(payload)
    node = (body.get("source") or {}).get("node")
    return node if body.get("state") == "raised" and isinstance(node, str) else None


def main() -> None:
    port = int(sys.argv[1])
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-alarms-{port}")

    def connected(c: mqtt.Client, _u: Any, _f: Any, _rc: Any, _p: Any = None) -> None:
        c.subscribe("covers/+/alarm", qos=1)

    def subscribed(*_: Any) -> None:
        print("READY", flush=True)

    def message(_c: mqtt.Client, _u: Any, m: mqtt.MQTTMessage) -> None:
        arrived = time.perf_counter()
        node = raised_node(m.payload)
        if node:
            print(node, arrived, flush=True)

    client.on_connect = connected
    client.on_subscribe = subscribed
    client.on_message = message
    client.connect("127.0.0.1", port)
    client.loop_forever()


if __name__ == "__main__":
    main()
