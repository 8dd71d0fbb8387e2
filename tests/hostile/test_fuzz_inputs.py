"""Arbitrary bytes at every input of the running daemon (issue 8, "How it is shown").

One daemon with every kind of input a stranger or a failing part can reach: the
radio pty (transparent dialect), UDP with SCN-1 frames, UDP and TCP with
Milesight NB-IoT frames, and a ChirpStack integration on the broker, the last
with LoRaWAN devices registered so random payloads reach the real decoders.
After every case the daemon must answer a ``ping``; at the end the registered
cover's real alarm must still arrive within 2 s.
"""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from firmware_sim.netserver import APPLICATION_ID, up_event
from gateway.control import request
from gateway.protocol.codec import encode_frame
from gateway.protocol.devices import em400, nbiot
from tests.harness import Broker, free_port, free_udp_port
from tests.hostile.conftest import COVER_ID, NODE_ID, Daemon, Launch, publish
from tests.strategies import frames

TILT_EUI = "24e124538b223213"
LEVEL_EUI = "24e124126c140257"
IMEI = "868508064807350"
REGISTRY = (
    "cover_id,owner_unit,node_id,device,device_id\n"
    f"{COVER_ID},drainage,{NODE_ID:08X},,\n"
    f"HZ-0002,drainage,,em310-tilt,{TILT_EUI}\n"
    f"HZ-0003,drainage,,em400-mud,{LEVEL_EUI}\n"
    f"HZ-0004,drainage,,em400-mud,{IMEI}\n"
)
PORT_OF = {  # each case's input, by its name in the config
    "radio": "lora0",
    "udp_scn1": "nbiot0",
    "udp_nb": "nbmile",
    "tcp_nb": "nbtcp",
    "lorawan_raw": "cs",
    "lorawan_data": "cs",
}


def mangled(data: bytes, cut: int, byte: int) -> bytes:
    """A valid message with one byte replaced: the cases a noisy link really produces."""
    return data[:cut] + bytes([byte]) + data[cut + 1 :]


scn1_bytes = st.one_of(
    st.binary(max_size=300),
    frames.map(encode_frame),
    st.builds(mangled, frames.map(encode_frame), st.integers(0, 250), st.integers(0, 255)),
)
nb_frame = nbiot.build_nb_frame(em400.build_reading(battery_pct=90, distance_mm=1500))
nb_bytes = st.one_of(
    st.binary(max_size=400),
    st.builds(mangled, st.just(nb_frame), st.integers(0, len(nb_frame)), st.integers(0, 255)),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)
cases = st.one_of(
    st.tuples(st.just("radio"), scn1_bytes),
    st.tuples(st.just("udp_scn1"), scn1_bytes),
    st.tuples(st.just("udp_nb"), nb_bytes),
    st.tuples(st.just("tcp_nb"), nb_bytes),
    st.tuples(
        st.just("lorawan_raw"),
        st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())),
    ),
    st.tuples(st.just("lorawan_data"), st.binary(max_size=64)),
)


def send_udp(port: int, data: bytes, source: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((source, 0))
        s.sendto(data, ("127.0.0.1", port))


class Inputs:
    def __init__(self, gw: Daemon, broker: Broker, ports: dict[str, int]) -> None:
        self.gw, self.broker, self.ports = gw, broker, ports
        self.f_cnt = 0

    async def send(self, where: str, data: bytes) -> None:
        match where:
            case "radio":
                self.gw.radio.write(data)
            case "udp_scn1":
                send_udp(self.ports["udp_scn1"], data, "127.0.0.5")
            case "udp_nb":
                send_udp(self.ports["udp_nb"], data, "127.0.0.6")
            case "tcp_nb":
                _, writer = await asyncio.open_connection("127.0.0.1", self.ports["tcp_nb"])
                writer.write(data)
                await writer.drain()
                writer.close()
            case "lorawan_raw":
                await publish(self.broker.port, self._up_topic(TILT_EUI), data)
            case "lorawan_data":
                self.f_cnt += 1
                for eui, model in ((TILT_EUI, "em310-tilt"), (LEVEL_EUI, "em400-mud")):
                    event = up_event(eui, data, f_port=85, f_cnt=self.f_cnt, model=model)
                    await publish(self.broker.port, self._up_topic(eui), json.dumps(event).encode())

    @staticmethod
    def _up_topic(eui: str) -> str:
        return f"application/{APPLICATION_ID}/device/{eui}/event/up"


async def test_arbitrary_bytes_at_every_input_never_stop_the_daemon(
    launch: Launch, broker: Broker, tmp_path: Path
) -> None:
    registry = tmp_path / "devices.csv"
    registry.write_text(REGISTRY, encoding="utf-8")
    ports = {"udp_scn1": free_udp_port(), "udp_nb": free_udp_port(), "tcp_nb": free_port()}
    gw = await launch(
        gateway={"registry": str(registry)},
        udp=[
            {"name": "nbiot0", "bind": f"127.0.0.1:{ports['udp_scn1']}"},
            {"name": "nbmile", "bind": f"127.0.0.1:{ports['udp_nb']}", "format": "milesight-nb"},
        ],
        tcp=[{"name": "nbtcp", "bind": f"127.0.0.1:{ports['tcp_nb']}", "idle_timeout_s": 2}],
        lorawan=[{"name": "cs", "host": "127.0.0.1", "port": broker.port}],
    )
    inputs = Inputs(gw, broker, ports)
    loop = asyncio.get_running_loop()
    seen: set[str] = set()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout=60)

    @settings(
        max_examples=60,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    @given(cases)
    def case(case: tuple[str, bytes]) -> None:
        where, data = case
        seen.add(where)
        run(inputs.send(where, data))
        answer = run(gw.ping())
        assert answer["result"] == {"pong": True}, answer

    await asyncio.to_thread(case)
    assert len(seen) >= 4  # the cases really went to several kinds of input
    await gw.assert_serving()
    assert gw.proc.poll() is None
    # The cases reached the inputs' own checks (taken or refused, and counted there).
    ports = (await request(gw.state_dir / "control.sock", "status"))["stats"]["ports"]
    for where in seen:
        port = ports[PORT_OF[where]]
        counted = sum(v for k, v in port.items() if isinstance(v, int) and k != "connects")
        assert counted > 0, (where, port)
