"""Events/s through the commercial-sensor inputs, one core: ChirpStack JSON → Observation.

Measures ``LorawanInput.handle`` (size cap, JSON, field checks, de-dup, fCnt,
decode, observation) on the spec's EM310-TILT uplink event, and
``NbReceiver.frame`` on the spec's NB-IoT history frame. No broker: the MQTT
client's own cost is aiomqtt's.
"""

from __future__ import annotations

import json
import time

from firmware_sim.netserver import event_topic, up_event
from gateway.config import LorawanConfig
from gateway.drivers.lorawan import LorawanInput
from gateway.drivers.nbiot import NbReceiver
from gateway.observation import DeviceRef
from gateway.protocol.devices import build_nb_frame, em400

N = 20_000
EUI = "24e124710c401234"
IMEI = "868508064807350"


def main() -> None:
    sunk = 0

    def sink(_event: object, _critical: bool) -> None:
        nonlocal sunk
        sunk += 1

    lorawan = LorawanInput(
        LorawanConfig(name="bench", dedup_window=1000),
        sink,
        lookup=lambda i: (DeviceRef("em310-tilt", i), "C"),
    )
    topic = event_topic(EUI, "up")
    data = bytes.fromhex("01756403cf3a0218fc7a2300")
    events = [json.dumps(up_event(EUI, data, f_port=85, f_cnt=i)).encode() for i in range(N)]
    start = time.perf_counter()
    for payload in events:
        lorawan.handle(topic, payload)
    took = time.perf_counter() - start
    print(
        f"lorawan up events: {N / took:,.0f}/s ({took / N * 1e6:.1f} µs each), {sunk} observations"
    )

    nb = NbReceiver(
        "bench", sink, lookup=lambda i: (DeviceRef("em400-mud", i), "W"), clock=time.time
    )
    records = em400.build_reading(battery_pct=55, distance_mm=1800) * 2
    frames = [build_nb_frame(records, imei=IMEI, frame_cnt=i % 65536) for i in range(N)]
    sunk = 0
    start = time.perf_counter()
    for frame in frames:
        nb.frame(frame, "bench")
    took = time.perf_counter() - start
    print(
        f"nb-iot frames (2 readings): {N / took:,.0f}/s ({took / N * 1e6:.1f} µs each), "
        f"{sunk} observations"
    )


if __name__ == "__main__":
    main()
