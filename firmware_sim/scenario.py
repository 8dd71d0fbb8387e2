"""Scenario files: the simulated hardware and a timeline of what happens to it.

A scenario is TOML (see ``firmware_sim/scenarios/*.toml`` and
docs/simulator.md). Loading validates everything up front and names the key
of any mistake, so a typo in a CI scenario fails at once, not minutes in.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from firmware_sim.devices import DEVICE_FIELDS, LORAWAN_MODELS, NB_MODELS, is_imei
from firmware_sim.dialects import Dialect
from gateway.confcheck import Table, hostport
from gateway.errors import ConfigError
from gateway.protocol.messages import EventCode, GasKind, ResetCauseCode

NODE_FIELDS = {
    "tilt_deg",
    "water_mm",
    "battery_mv",
    "temperature_c",
    "pressure_kpa",
    "vibration_mg",
    "rx_rssi_dbm",
} | {f"gas_{k.name}" for k in GasKind}
SLAVE_FIELDS = {"roll_deg", "pitch_deg", "yaw_deg", "temperature_c", "level", "noise"}
SLAVE_MODELS = ("wit_inclinometer", "qdy30a_level")


class Action(StrEnum):
    SET = "set"  # values change at once
    RAMP = "ramp"  # values move linearly to the target over ``for_s``
    PULSE = "pulse"  # values change for ``for_s``, then return (a lorry driving over)
    EVENT = "event"  # the node sends an EVENT (with retransmissions)
    REPORT = "report"  # the node sends a REPORT now
    SILENCE = "silence"  # node stolen / slave unpowered
    RESUME = "resume"
    RESET = "reset"  # node reboots: BOOT, SEQ from 0
    DROP = "drop"  # the node's next ``count`` frames are lost over the air
    DUPLICATE = "duplicate"  # the node's next ``count`` frames are heard twice
    NOISE = "noise"  # garbage bytes on a radio port


@dataclass(frozen=True)
class RadioPort:
    name: str
    dialect: Dialect = Dialect.TRANSPARENT
    rssi_append: bool = False
    chunk_bytes: int = 0  # 0: a packet at once; n: n bytes per write


@dataclass(frozen=True)
class UdpTarget:
    name: str
    target: tuple[str, int] | None = None


@dataclass(frozen=True)
class NodeSpec:
    node_id: int
    link: str
    report_interval_s: float = 900.0
    heartbeat_interval_s: float = 21600.0
    boot_on_start: bool = True
    seq_start: int = 0
    initial: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SlaveSpec:
    model: str
    address: int
    initial: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BusSpec:
    name: str
    slaves: tuple[SlaveSpec, ...]
    baudrate: int = 9600


NETWORK_SERVER = "network_server"  # a device's link: the simulated ChirpStack


@dataclass(frozen=True)
class NetworkServerSpec:
    """The simulated ChirpStack: where it publishes (``--ns-broker`` overrides)."""

    broker: tuple[str, int] | None = None
    application_id: str = "0b0f6a2c-1d63-4a8e-9a57-3c1f0e4d2b10"


@dataclass(frozen=True)
class DeviceSpec:
    """A commercial sensor: LoRaWAN through the network server, or NB-IoT over a udp link."""

    model: str
    device_id: str
    link: str
    report_interval_s: float = 600.0
    initial: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One timeline entry; which target fields are set depends on the action."""

    at_s: float
    action: Action
    node: int | None = None
    bus: str | None = None
    slave: int | None = None
    link: str | None = None
    values: dict[str, Any] = field(default_factory=dict)
    for_s: float = 0.0
    count: int = 1
    event: EventCode | None = None
    event_value: int | None = None
    age_s: int = 0
    retries: int = 0
    reset_cause: ResetCauseCode = ResetCauseCode.POWER_ON
    noise_bytes: int = 64
    device: str | None = None

    def describe(self) -> str:
        target = (
            f"device {self.device}"
            if self.device is not None
            else f"node {self.node:08X}"
            if self.node is not None
            else f"slave {self.bus}/{self.slave}"
            if self.bus is not None
            else f"link {self.link}"
        )
        extra = f" {self.event.name.lower()}" if self.event else ""
        vals = f" {self.values}" if self.values else ""
        dur = f" for {self.for_s:g}s" if self.for_s else ""
        return f"t={self.at_s:g}s {self.action.value}{extra} {target}{vals}{dur}"


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    duration_s: float
    seed: int
    radios: tuple[RadioPort, ...]
    udp: tuple[UdpTarget, ...]
    nodes: tuple[NodeSpec, ...]
    buses: tuple[BusSpec, ...]
    timeline: tuple[Step, ...]
    network_server: NetworkServerSpec | None = None
    devices: tuple[DeviceSpec, ...] = ()


def parse_node_id(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        node_id = value
    elif isinstance(value, str):
        try:
            node_id = int(value, 16)
        except ValueError:
            raise ValueError(f"node id must be 8 hex digits, got {value!r}") from None
    else:
        raise ValueError(f"node id must be 8 hex digits, got {value!r}")  # noqa: TRY004
    if not 0 <= node_id <= 0xFFFFFFFF:
        raise ValueError(f"node id out of range: {value!r}")
    return node_id


def _values(t: Table, allowed: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in sorted(allowed):
        if not t.has(name):
            continue
        if name == "tilt_deg":
            raw = t.convert(name, _pair)
            out[name] = raw
        else:
            out[name] = t.number(name)
    return out


def _pair(value: object) -> tuple[float, float]:
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        return float(value[0]), float(value[1])
    raise ValueError(f"must be [x, y] in degrees, got {value!r}")


def _parse_node(t: Table, node_id: int, links: set[str]) -> NodeSpec:
    link = t.text("link")
    if link not in links:
        raise ConfigError(t.key("link"), f"no radio or udp link named {link!r}")
    initial = _values(t, NODE_FIELDS)
    if t.flag("water_fitted", "water_mm" in initial):
        initial["water_fitted"] = True
    return NodeSpec(
        node_id=node_id,
        link=link,
        report_interval_s=t.number("report_interval_s", 900.0, lo=0.05),
        heartbeat_interval_s=t.number("heartbeat_interval_s", 21600.0, lo=0.05),
        boot_on_start=t.flag("boot_on_start", True),
        seq_start=t.integer("seq_start", 0, lo=0, hi=0xFFFF),
        initial=initial,
    )


_DEVICE_ACTIONS = (
    Action.SET,
    Action.RAMP,
    Action.PULSE,
    Action.REPORT,
    Action.SILENCE,
    Action.RESUME,
    Action.RESET,
    Action.DROP,
    Action.DUPLICATE,
)


def _parse_device_step(t: Table, action: Action, at_s: float, device: str) -> Step:
    """A timeline entry for a commercial sensor (``device = "<DevEUI or IMEI>"``)."""
    if action not in _DEVICE_ACTIONS:
        raise ConfigError(t.key("do"), f"{action.value} does not apply to a device")
    values = _device_values(t)
    if action in (Action.SET, Action.RAMP, Action.PULSE) and not values:
        raise ConfigError(t.path, f"{action.value} needs at least one value to change")
    step = Step(
        at_s=at_s,
        action=action,
        device=device,
        values=values,
        for_s=t.number("for_s", 0.0, lo=0),
        count=t.integer("count", 1, lo=1),
    )
    t.done()
    return step


def _device_values(t: Table) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in sorted(DEVICE_FIELDS):
        if t.has(name):
            out[name] = t.convert(name, _triple) if name == "tilt_deg" else t.number(name)
    return out


def _triple(value: object) -> tuple[float, float, float]:
    if (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        return float(value[0]), float(value[1]), float(value[2])
    raise ValueError(f"must be [x, y, z] in degrees, got {value!r}")


def _parse_device(t: Table, udp_links: set[str], network_server: bool) -> DeviceSpec:
    model = t.text("model")
    device_id = t.text("id")
    if is_imei(device_id):
        if model not in NB_MODELS:
            raise ConfigError(t.key("model"), f"NB-IoT (an IMEI id) is one of {NB_MODELS}")
        link = t.text("link")
        if link not in udp_links:
            raise ConfigError(t.key("link"), f"an NB-IoT device needs a udp link, not {link!r}")
    else:
        if model not in LORAWAN_MODELS:
            raise ConfigError(t.key("model"), f"must be one of {', '.join(LORAWAN_MODELS)}")
        if len(device_id) != 16 or any(c not in "0123456789abcdef" for c in device_id.lower()):
            raise ConfigError(t.key("id"), "a DevEUI (16 hex digits) or an IMEI (15 digits)")
        device_id = device_id.lower()
        link = t.text("link", NETWORK_SERVER)
        if link != NETWORK_SERVER or not network_server:
            raise ConfigError(t.key("link"), "a LoRaWAN device needs [network_server]")
    return DeviceSpec(
        model=model,
        device_id=device_id,
        link=link,
        report_interval_s=t.number("report_interval_s", 600.0, lo=0.05),
        initial=_device_values(t),
    )


def _parse_step(
    t: Table,
    nodes: set[int],
    buses: dict[str, set[int]],
    radios: set[str],
    devices: set[str] | None = None,
) -> Step:
    action = t.choice("do", Action)
    at_s = t.number("at_s", lo=0)
    device = t.text("device", None)
    if device is not None:
        if device.lower() not in (devices or set()):
            raise ConfigError(t.key("device"), f"no device {device} in this scenario")
        return _parse_device_step(t, action, at_s, device.lower())
    node = t.convert("node", parse_node_id, None)
    bus = t.text("bus", None)
    slave = t.integer("slave", None, lo=0, hi=247)
    link = t.text("link", None)
    if node is not None and node not in nodes:
        raise ConfigError(t.key("node"), f"no node {node:08X} in this scenario")
    if bus is not None and (bus not in buses or slave not in buses[bus]):
        raise ConfigError(t.key("slave"), f"no slave {slave} on bus {bus!r}")
    if link is not None and link not in radios:
        raise ConfigError(t.key("link"), f"no radio port named {link!r}")
    if sum(x is not None for x in (node, bus, link)) != 1:
        raise ConfigError(t.path, "give exactly one target: node, bus+slave, or link")
    if action is Action.NOISE and link is None:
        raise ConfigError(t.key("do"), "noise goes on a radio link")
    if bus is not None and action not in (
        Action.SET,
        Action.RAMP,
        Action.PULSE,
        Action.SILENCE,
        Action.RESUME,
    ):
        raise ConfigError(t.key("do"), f"{action.value} does not apply to a Modbus slave")
    values = _values(t, SLAVE_FIELDS if bus is not None else NODE_FIELDS)
    if action in (Action.SET, Action.RAMP, Action.PULSE) and not values:
        raise ConfigError(t.path, f"{action.value} needs at least one value to change")
    event_name = t.text("event", None)
    event = None
    if event_name is not None:
        try:
            event = EventCode[event_name.upper()]
        except KeyError:
            names = ", ".join(e.name.lower() for e in EventCode)
            raise ConfigError(t.key("event"), f"must be one of {names}") from None
    if action is Action.EVENT and event is None:
        raise ConfigError(t.key("event"), "is required for do = 'event'")
    cause = t.text("reset_cause", "power_on")
    try:
        reset_cause = ResetCauseCode[cause.upper()]
    except KeyError:
        raise ConfigError(t.key("reset_cause"), f"unknown reset cause {cause!r}") from None
    step = Step(
        at_s=at_s,
        action=action,
        node=node,
        bus=bus,
        slave=slave,
        link=link,
        values=values,
        for_s=t.number("for_s", 0.0, lo=0),
        count=t.integer("count", 1, lo=1),
        event=event,
        event_value=t.integer("value", None, lo=-32768, hi=32767),
        age_s=t.integer("age_s", 0, lo=0),
        retries=t.integer("retries", 0, lo=0, hi=3),
        reset_cause=reset_cause,
        noise_bytes=t.integer("bytes", 64, lo=1, hi=100_000),
    )
    t.done()
    return step


def load_scenario(path: Path) -> Scenario:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(str(path), f"not valid TOML: {err}") from err
    return parse_scenario(data)


def _parse_devices(
    root: Table, udp_links: set[str]
) -> tuple[NetworkServerSpec | None, list[DeviceSpec]]:
    network_server = None
    if root.has("network_server"):
        nt = root.table("network_server")
        network_server = NetworkServerSpec(
            broker=nt.convert("broker", hostport, None),
            application_id=nt.text("application_id", NetworkServerSpec.application_id),
        )
        nt.done()
    devices = []
    for t in root.tables("devices"):
        devices.append(_parse_device(t, udp_links, network_server is not None))
        t.done()
    device_ids = [d.device_id for d in devices]
    if len(set(device_ids)) != len(device_ids):
        raise ConfigError("devices", "device ids repeat")
    return network_server, devices


def parse_scenario(data: dict[str, Any]) -> Scenario:
    root = Table(data)
    head = root.table("scenario", required=True)
    radios = []
    for t in root.tables("radio"):
        radios.append(
            RadioPort(
                name=t.text("name"),
                dialect=t.choice("dialect", Dialect, Dialect.TRANSPARENT),
                rssi_append=t.flag("rssi_append", False),
                chunk_bytes=t.integer("chunk_bytes", 0, lo=0, hi=4096),
            )
        )
        t.done()
    udp = []
    for t in root.tables("udp"):
        target = t.convert("target", hostport, None)
        udp.append(UdpTarget(name=t.text("name"), target=target))
        t.done()
    links = {r.name for r in radios} | {u.name for u in udp}
    if len(links) != len(radios) + len(udp):
        raise ConfigError("radio/udp", "link names must be unique")

    nodes: list[NodeSpec] = []
    for t in root.tables("nodes"):
        nodes.append(_parse_node(t, t.convert("id", parse_node_id), links))
        t.done()
    for t in root.tables("node_groups"):
        first = t.convert("first_id", parse_node_id)
        count = t.integer("count", lo=1, hi=100_000)
        water_every = t.integer("water_every", 0, lo=0)
        template = _parse_node(t, first, links)
        t.done()
        for i in range(count):
            initial = dict(template.initial)
            if water_every and i % water_every == 0:
                initial.setdefault("water_mm", 2500.0)
                initial["water_fitted"] = True
            nodes.append(
                NodeSpec(
                    node_id=first + i,
                    link=template.link,
                    report_interval_s=template.report_interval_s,
                    heartbeat_interval_s=template.heartbeat_interval_s,
                    boot_on_start=template.boot_on_start,
                    seq_start=template.seq_start,
                    initial=initial,
                )
            )
    ids = [n.node_id for n in nodes]
    if len(set(ids)) != len(ids):
        raise ConfigError("nodes", "node ids repeat")

    buses = []
    for t in root.tables("buses"):
        slaves = []
        for st in t.tables("slaves"):
            model = st.text("model")
            if model not in SLAVE_MODELS:
                raise ConfigError(st.key("model"), f"must be one of {', '.join(SLAVE_MODELS)}")
            address = st.integer("address", lo=1, hi=247)
            initial = _values(st, SLAVE_FIELDS)
            if model == "qdy30a_level":
                initial["decimals"] = st.integer("decimals", 3, lo=0, hi=4)
            slaves.append(SlaveSpec(model, address, initial))
            st.done()
        buses.append(
            BusSpec(t.text("name"), tuple(slaves), baudrate=t.integer("baudrate", 9600, lo=1200))
        )
        t.done()
    network_server, devices = _parse_devices(root, {u.name for u in udp})
    device_ids = [d.device_id for d in devices]

    bus_slaves = {b.name: {s.address for s in b.slaves} for b in buses}
    radio_names = {r.name for r in radios}
    timeline = [
        _parse_step(t, set(ids), bus_slaves, radio_names, set(device_ids))
        for t in root.tables("timeline")
    ]
    scenario = Scenario(
        name=head.text("name"),
        description=head.text("description", ""),
        duration_s=head.number("duration_s", lo=0.1),
        seed=head.integer("seed", 1),
        radios=tuple(radios),
        udp=tuple(udp),
        nodes=tuple(nodes),
        buses=tuple(buses),
        timeline=tuple(sorted(timeline, key=lambda s: s.at_s)),
        network_server=network_server,
        devices=tuple(devices),
    )
    head.done()
    root.done()
    return scenario
