"""Runs a scenario: nodes report on their schedules, the timeline changes the world.

Scenario time is scaled by ``speed`` (2.0 runs a 60 s scenario in 30 s of
wall time); report intervals and ``for_s`` durations scale with it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self

from firmware_sim.devices import SimDevice
from firmware_sim.dialects import Dialect, module_output
from firmware_sim.modbus_slaves import Qdy30aLevel, SimBus, SimSlave, WitInclinometer
from firmware_sim.netserver import NetworkServer
from firmware_sim.node import NodeState, SimNode
from firmware_sim.ptys import PtyPort
from firmware_sim.scenario import Action, DeviceSpec, NodeSpec, RadioPort, Scenario, Step
from gateway.protocol.codec import encode_frame
from gateway.protocol.messages import Frame, GasKind

log = logging.getLogger(__name__)

RETRY_GAP_S = 0.5
RAMP_TICK_S = 0.2


class RadioLink:
    """A radio module's UART, as a pty the gateway opens."""

    def __init__(self, spec: RadioPort) -> None:
        self.spec = spec
        self.port = PtyPort()
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()

    @property
    def path(self) -> str:
        return self.port.path

    def send(self, frame: bytes, node: SimNode) -> None:
        data = module_output(
            self.spec.dialect,
            frame,
            rssi_dbm=node.state.rx_rssi_dbm,
            snr_db=node.state.rx_snr_db,
            rssi_append=self.spec.rssi_append,
        )
        self._queue.put_nowait(data)

    def send_raw(self, data: bytes) -> None:
        self._queue.put_nowait(data)

    async def pump(self) -> None:
        """Writes in order; ``chunk_bytes`` dribbles each packet out like a slow UART."""
        chunk = self.spec.chunk_bytes
        while True:
            data = await self._queue.get()
            try:
                if not chunk:
                    self.port.write(data)
                    continue
                for i in range(0, len(data), chunk):
                    self.port.write(data[i : i + chunk])
                    await asyncio.sleep(0.001)
            finally:
                self._queue.task_done()

    async def drained(self) -> None:
        await self._queue.join()
        await asyncio.sleep(0.05)  # the last packet's bytes leave the pty

    def close(self) -> None:
        self.port.close()


class UdpLink:
    """NB-IoT nodes as the operator's APN delivers them: one datagram, one frame."""

    def __init__(self, name: str, target: tuple[str, int]) -> None:
        self.name = name
        self.target = target
        family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setblocking(False)

    def send(self, frame: bytes, node: SimNode) -> None:
        self.sock_send(frame)

    def sock_send(self, frame: bytes) -> None:
        try:
            self.sock.sendto(frame, self.target)
        except OSError as err:  # nobody listening yet: the datagram is lost, as on the APN
            log.debug("udp %s to %s: %s", self.name, self.target, err)

    def close(self) -> None:
        self.sock.close()


Link = RadioLink | UdpLink


class _Settable(Protocol):
    def get(self, name: str) -> Any: ...
    def set(self, name: str, value: Any) -> None: ...


class _Values:
    """Get/set a node's or slave's scenario values by their scenario names."""

    def __init__(self, target: SimNode | SimSlave) -> None:
        self.target = target

    def get(self, name: str) -> Any:
        if isinstance(self.target, SimNode):
            state = self.target.state
            if name.startswith("gas_"):
                return state.gases.get(GasKind[name[4:]], 0.0)
            return getattr(state, name)
        return getattr(self.target, name)

    def set(self, name: str, value: Any) -> None:
        if isinstance(self.target, SimNode):
            state: NodeState = self.target.state
            if name.startswith("gas_"):
                state.gases[GasKind[name[4:]]] = float(value)
            elif name in ("water_mm", "battery_mv", "vibration_mg", "rx_rssi_dbm"):
                setattr(state, name, round(value))
            else:
                setattr(state, name, value)
        else:
            setattr(self.target, name, value)


def _lerp(a: Any, b: Any, f: float) -> Any:
    if isinstance(a, tuple):
        return tuple(_lerp(x, y, f) for x, y in zip(a, b, strict=True))
    return a + (b - a) * f


@dataclass
class Endpoints:
    radios: dict[str, dict[str, Any]] = field(default_factory=dict)
    udp: dict[str, dict[str, Any]] = field(default_factory=dict)
    buses: dict[str, dict[str, Any]] = field(default_factory=dict)
    # The simulated ChirpStack's broker and the devices it speaks for (empty: none).
    network_server: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {"radios": self.radios, "udp": self.udp, "buses": self.buses}
        if self.network_server:
            out["network_server"] = self.network_server
        return out


class ScenarioRunner:
    """Owns the simulated hardware for one scenario (an async context manager)."""

    def __init__(
        self,
        scenario: Scenario,
        *,
        speed: float = 1.0,
        udp_target: tuple[str, int] | None = None,
        on_step: Callable[[Step], None] | None = None,
        ns_broker: tuple[str, int] | None = None,
    ) -> None:
        self.scenario = scenario
        self._ns_broker = ns_broker
        self.devices: dict[str, SimDevice] = {}
        self.network_server: NetworkServer | None = None
        self.speed = speed
        self._udp_target = udp_target
        self._on_step = on_step
        self._rng = random.Random(scenario.seed)
        self.links: dict[str, Link] = {}
        self.buses: dict[str, SimBus] = {}
        self.nodes: dict[int, SimNode] = {}
        self._node_links: dict[int, Link] = {}
        self._t0 = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent: list[Frame] = []  # every frame put on the air (a duplicate counted once)

    async def __aenter__(self) -> Self:
        for radio in self.scenario.radios:
            self.links[radio.name] = RadioLink(radio)
        for udp in self.scenario.udp:
            target = self._udp_target or udp.target
            if target is None:
                raise ValueError(f"udp link {udp.name!r} has no target: give --udp-target")
            self.links[udp.name] = UdpLink(udp.name, target)
        for spec in self.scenario.nodes:
            node = SimNode(spec.node_id, NodeState(), seq=spec.seq_start)
            values = _Values(node)
            for name, value in spec.initial.items():
                values.set(name, value)
            self.nodes[spec.node_id] = node
            self._node_links[spec.node_id] = self.links[spec.link]
        for bus_spec in self.scenario.buses:
            slaves: list[SimSlave] = []
            for s in bus_spec.slaves:
                slave: SimSlave
                if s.model == "wit_inclinometer":
                    slave = WitInclinometer(address=s.address)
                else:
                    slave = Qdy30aLevel(address=s.address)
                for name, value in s.initial.items():
                    setattr(slave, name, value)
                slaves.append(slave)
            bus = SimBus(bus_spec.name, slaves, baudrate=bus_spec.baudrate)
            await bus.start()
            self.buses[bus.name] = bus
        await self._start_devices()
        return self

    async def _start_devices(self) -> None:
        for spec in self.scenario.devices:
            device = SimDevice(spec.model, spec.device_id)
            for name, value in spec.initial.items():
                device.set(name, value)
            self.devices[spec.device_id] = device
        if not any(not d.nbiot for d in self.devices.values()):
            return
        ns_spec = self.scenario.network_server
        assert ns_spec is not None  # the scenario parser requires it for LoRaWAN devices
        broker = self._ns_broker or ns_spec.broker
        if broker is None:
            raise ValueError("the network server has no broker: give --ns-broker")
        self.network_server = NetworkServer(
            broker[0], broker[1], application_id=ns_spec.application_id
        )
        await self.network_server.__aenter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for bus in self.buses.values():
            await bus.stop()
        for link in self.links.values():
            link.close()
        if self.network_server is not None:
            await self.network_server.__aexit__(exc_type, exc, tb)

    def endpoints(self) -> Endpoints:
        out = Endpoints()
        for name, link in self.links.items():
            if isinstance(link, RadioLink):
                out.radios[name] = {
                    "path": link.path,
                    "dialect": link.spec.dialect.value,
                    "rssi_append": link.spec.rssi_append,
                }
            else:
                out.udp[name] = {"target": f"{link.target[0]}:{link.target[1]}"}
        for name, bus in self.buses.items():
            out.buses[name] = {
                "path": bus.path,
                "baudrate": bus.baudrate,
                "slaves": [s.address for s in bus.slaves],
            }
        if self.network_server is not None:
            ns = self.network_server
            out.network_server = {
                "broker": f"{ns.host}:{ns.port}",
                "application_id": ns.application_id,
                "devices": {d.device_id: d.model for d in self.devices.values() if not d.nbiot},
            }
        return out

    # --- time ---

    def now(self) -> float:
        """Scenario seconds since ``run`` started."""
        return (asyncio.get_running_loop().time() - self._t0) * self.speed

    async def sleep(self, scenario_s: float) -> None:
        await asyncio.sleep(max(0.0, scenario_s / self.speed))

    async def _sleep_until(self, at_s: float) -> None:
        await self.sleep(at_s - self.now())

    # --- sending ---

    def transmit(self, node: SimNode, frame: Frame) -> None:
        if node.silent:
            return
        if node.drop_next:
            node.drop_next -= 1
            return
        data = encode_frame(frame)
        self.sent.append(frame)
        link = self._node_links[node.node_id]
        link.send(data, node)
        if node.duplicate_next:
            node.duplicate_next -= 1
            link.send(data, node)

    async def _node_loop(self, node: SimNode, spec: NodeSpec) -> None:
        interval, heartbeat = spec.report_interval_s, spec.heartbeat_interval_s
        if spec.boot_on_start:
            await self.sleep(self._rng.uniform(0, min(interval, 2.0)))
            self.transmit(node, node.boot())
        next_report = self.now() + self._rng.uniform(0.2, interval)
        next_heartbeat = self.now() + heartbeat
        while True:
            await self._sleep_until(min(next_report, next_heartbeat))
            if self.now() >= next_report:
                self.transmit(node, node.report())
                next_report += interval
                next_heartbeat = self.now() + heartbeat
            elif self.now() >= next_heartbeat:
                self.transmit(node, node.heartbeat())
                next_heartbeat += heartbeat

    # --- timeline ---

    def _target(self, step: Step) -> _Values:
        if step.node is not None:
            return _Values(self.nodes[step.node])
        assert step.bus is not None
        assert step.slave is not None
        return _Values(self.buses[step.bus].slave(step.slave))

    async def _ramp(self, target: _Settable, values: dict[str, Any], over_s: float) -> None:
        start = {name: target.get(name) for name in values}
        begin = self.now()
        while (elapsed := self.now() - begin) < over_s:
            f = elapsed / over_s
            for name, value in values.items():
                target.set(name, _lerp(start[name], value, f))
            await self.sleep(RAMP_TICK_S)
        for name, value in values.items():
            target.set(name, value)

    async def _pulse(self, target: _Settable, values: dict[str, Any], for_s: float) -> None:
        before = {name: target.get(name) for name in values}
        for name, value in values.items():
            target.set(name, value)
        await self.sleep(for_s)
        for name, value in before.items():
            target.set(name, value)

    async def _event(self, step: Step) -> None:
        assert step.node is not None
        assert step.event is not None
        node = self.nodes[step.node]
        frame = node.event(step.event, age_s=step.age_s, value_raw=step.event_value)
        self.transmit(node, frame)
        for _ in range(step.retries):
            await self.sleep(RETRY_GAP_S)
            self.transmit(node, node.retransmission(frame))

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def apply(self, step: Step) -> None:
        """Carry out one timeline step now (long ones continue in the background)."""
        if self._on_step is not None:
            self._on_step(step)
        log.info("scenario %s", step.describe())
        if step.device is not None:
            self._apply_device(step, self.devices[step.device])
            return
        match step.action:
            case Action.SET:
                target = self._target(step)
                for name, value in step.values.items():
                    target.set(name, value)
            case Action.RAMP:
                self._spawn(self._ramp(self._target(step), step.values, step.for_s), "ramp")
            case Action.PULSE:
                self._spawn(self._pulse(self._target(step), step.values, step.for_s), "pulse")
            case Action.EVENT:
                self._spawn(self._event(step), "event")
            case Action.REPORT:
                node = self.nodes[step.node or 0]
                self.transmit(node, node.report())
            case Action.SILENCE | Action.RESUME:
                silent = step.action is Action.SILENCE
                if step.node is not None:
                    self.nodes[step.node].silent = silent
                else:
                    assert step.bus is not None
                    assert step.slave is not None
                    self.buses[step.bus].slave(step.slave).silent = silent
            case Action.RESET:
                node = self.nodes[step.node or 0]
                self.transmit(node, node.boot(step.reset_cause))
            case Action.DROP:
                self.nodes[step.node or 0].drop_next += step.count
            case Action.DUPLICATE:
                self.nodes[step.node or 0].duplicate_next += step.count
            case Action.NOISE:
                link = self.links[step.link or ""]
                assert isinstance(link, RadioLink)
                link.send_raw(self._noise(step.noise_bytes, link.spec.dialect))

    # --- commercial sensors ---

    def _apply_device(self, step: Step, device: SimDevice) -> None:
        match step.action:
            case Action.SET:
                for name, value in step.values.items():
                    device.set(name, value)
            case Action.RAMP:
                self._spawn(self._ramp(device, step.values, step.for_s), "ramp")
            case Action.PULSE:
                self._spawn(self._pulse(device, step.values, step.for_s), "pulse")
            case Action.REPORT:
                self._spawn(self._device_report(device), f"report-{device.device_id}")
            case Action.SILENCE | Action.RESUME:
                device.silent = step.action is Action.SILENCE
            case Action.RESET:
                device.counter = 0
                device.rejoin = not device.nbiot  # LoRaWAN: OTAA join, fCnt from 0
            case Action.DROP:
                device.drop_next += step.count
            case Action.DUPLICATE:
                device.duplicate_next += step.count

    async def _device_loop(self, device: SimDevice, spec: DeviceSpec) -> None:
        await self.sleep(self._rng.uniform(0.05, min(spec.report_interval_s, 1.0)))
        while True:
            await self._device_report(device)
            await self.sleep(spec.report_interval_s)

    async def _device_report(self, device: SimDevice) -> None:
        """One uplink: through the network server (LoRaWAN) or as a datagram (NB-IoT)."""
        if device.silent:
            return
        if device.nbiot:
            frame = device.nb_frame()
            if device.drop_next:
                device.drop_next -= 1
                return
            spec = next(d for d in self.scenario.devices if d.device_id == device.device_id)
            link = self.links[spec.link]
            assert isinstance(link, UdpLink)
            for _ in range(2 if device.duplicate_next else 1):
                link.sock_send(frame)
            device.duplicate_next = max(0, device.duplicate_next - 1)
            return
        ns = self.network_server
        assert ns is not None
        if device.rejoin:
            device.rejoin = False
            await ns.join(device.device_id, model=device.model)
        f_cnt = device.next_counter()
        if device.drop_next:
            device.drop_next -= 1
            return
        f_port, data = device.uplink()
        body = await ns.up(
            device.device_id,
            data,
            f_port=f_port,
            f_cnt=f_cnt,
            model=device.model,
            rx=[(round(device.rssi_dbm), device.snr_db)],
        )
        if device.duplicate_next:
            device.duplicate_next -= 1
            await ns.publish(device.device_id, "up", body)  # same deduplicationId

    def _noise(self, size: int, dialect: Dialect) -> bytes:
        """Line noise, salted with SYNC bytes and half frames so the framer must resync."""
        data = bytearray(self._rng.randbytes(size))
        for _ in range(max(1, size // 32)):
            at = self._rng.randrange(0, max(1, size - 3))
            data[at : at + 3] = b"\xa5\x5a" + bytes((self._rng.randrange(256),))
        if dialect is Dialect.AT:
            data += b"\r\nOK\r\n+EVT:TXP2P DONE\r\n"
        return bytes(data[: size + (0 if dialect is Dialect.TRANSPARENT else 24)])

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Run until the scenario's duration has passed or ``stop`` is set."""
        self._t0 = asyncio.get_running_loop().time()
        for link in self.links.values():
            if isinstance(link, RadioLink):
                self._spawn(link.pump(), f"pump-{link.spec.name}")
        for spec in self.scenario.nodes:
            node = self.nodes[spec.node_id]
            self._spawn(self._node_loop(node, spec), f"node-{node.node_hex}")
        for device_spec in self.scenario.devices:
            device = self.devices[device_spec.device_id]
            self._spawn(self._device_loop(device, device_spec), f"device-{device.device_id}")
        self._spawn(self._timeline(), "timeline")
        waiter = asyncio.ensure_future(self._sleep_until(self.scenario.duration_s))
        stopper = asyncio.ensure_future(stop.wait() if stop else asyncio.Event().wait())
        try:
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            stopper.cancel()

    async def quiesce(self) -> None:
        """Stop every node and the timeline; wait until what is queued is on the wire."""
        for task in list(self._tasks):
            if not task.get_name().startswith("pump-"):
                task.cancel()
        for link in self.links.values():
            if isinstance(link, RadioLink):
                await link.drained()

    async def _timeline(self) -> None:
        for step in self.scenario.timeline:
            await self._sleep_until(step.at_s)
            self.apply(step)


def scenario_dir() -> str:
    return os.path.join(os.path.dirname(__file__), "scenarios")
