"""The gateway's configuration: TOML validated once, at start, into frozen objects.

Every mistake is refused before anything opens, with its key path and the
reason (``uplink.port: must be 1–65535, got 70000``). Defaults live here and
nowhere else; deploy/covergw.toml documents every key.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway import digests
from gateway.confcheck import Errors, Table, hostport
from gateway.drivers.ingress import (
    MAX_SOURCES,
    SOURCE_BURST,
    SOURCE_RATE,
    Network,
    parse_networks,
)
from gateway.errors import ConfigError
from gateway.protocol.messages import GasKind
from gateway.wire import TelemetryEncoding

if TYPE_CHECKING:
    from gateway.protocol.modbus_profiles import DeviceProfile


class Dialect(StrEnum):
    TRANSPARENT = "transparent"
    AT = "at"


class MqttProtocol(StrEnum):
    AUTO = "auto"  # MQTT 5 first, 3.1.1 when the broker refuses the version
    V5 = "5"
    V311 = "3.1.1"


class SlaveRole(StrEnum):
    """What the edge logic makes of a slave's readings."""

    TILT = "tilt"  # fields roll_deg, pitch_deg
    WATER_LEVEL = "water_level"  # field level, in the slave's ``unit``
    NONE = "none"  # forwarded as telemetry only


LEVEL_UNITS_MM = {"m": 1000.0, "cm": 10.0, "mm": 1.0}
DEFAULT_ROLES = {"wit_inclinometer": SlaveRole.TILT, "qdy30a_level": SlaveRole.WATER_LEVEL}


@dataclass(frozen=True)
class TlsConfig:
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None

    def context(self) -> ssl.SSLContext:
        """The client context of every connection (uplink, ChirpStack, selftest): one to harden."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if self.cert_file is not None and self.key_file is not None:
            context.load_cert_chain(str(self.cert_file), str(self.key_file))
        return context


@dataclass(frozen=True)
class UplinkConfig:
    host: str = "127.0.0.1"
    port: int = 1883
    protocol: MqttProtocol = MqttProtocol.AUTO
    client_id: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in logs
    keepalive_s: int = 60
    max_inflight: int = 20
    publish_timeout_s: float = 10.0
    session_expiry_s: int = 86400
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    telemetry_batch_max: int = 100
    telemetry_batch_bytes: int = 64 * 1024
    # A backlog drains no faster than this (readings/s; 0: as fast as the broker takes it).
    drain_max_rate: int = 100_000
    stats_interval_s: float = 60.0
    tls: TlsConfig | None = None
    telemetry_encoding: TelemetryEncoding = TelemetryEncoding.JSON
    # Broker addresses to fail over between (a cluster's nodes); empty: (host, port) only.
    hosts: tuple[tuple[str, int], ...] = ()

    @property
    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Where to connect, in the order tried: ``hosts``, or ``host``/``port``."""
        return self.hosts or ((self.host, self.port),)


@dataclass(frozen=True)
class QueueConfig:
    max_bytes: int = 64 * 1024 * 1024
    flush_interval_s: float = 0.2
    flush_max: int = 500


@dataclass(frozen=True)
class MetricsConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 9108
    max_clients: int = 8


@dataclass(frozen=True)
class CommandsConfig:
    """``[commands]``: what a command from the platform may cost the gateway."""

    max_payload_bytes: int = 64 * 1024  # larger: answered invalid without parsing
    max_depth: int = 16  # JSON nesting deeper than this: answered invalid without parsing
    rate_per_s: float = 5.0  # token bucket refill; over it: answered busy
    burst: int = 20  # token bucket size
    lifetime_s: float = 600.0  # a command with sent_at older than this: answered expired
    maintenance_max_s: float = 72 * 3600.0  # the longest maintenance window
    remember_requests: int = 1000  # request ids kept (on disk) for de-duplication


@dataclass(frozen=True)
class ConsoleConfig:
    """The technician's console on the box's debug UART."""

    port: str
    baudrate: int = 115200


@dataclass(frozen=True)
class RadioConfig:
    name: str
    port: str
    baudrate: int = 9600
    dialect: Dialect = Dialect.TRANSPARENT
    rssi_append: bool = False
    init: tuple[str, ...] = ()
    reopen_min_s: float = 1.0
    reopen_max_s: float = 30.0


class UdpFormat(StrEnum):
    """What a UDP (or TCP) input's datagrams carry."""

    SCN1 = "scn1"  # our own node frames
    MILESIGHT_NB = "milesight-nb"  # the Milesight EM400 NB-IoT cellular frame


@dataclass(frozen=True)
class UdpConfig:
    name: str
    host: str
    port: int
    format: UdpFormat = UdpFormat.SCN1
    allow: tuple[Network, ...] = ()  # empty: any source (only on a loopback bind)
    source_rate: float = SOURCE_RATE
    source_burst: int = SOURCE_BURST
    max_sources: int = MAX_SOURCES


@dataclass(frozen=True)
class LorawanConfig:
    """``[[lorawan]]``: a ChirpStack v4 MQTT integration to subscribe to."""

    name: str
    host: str = "127.0.0.1"
    port: int = 1883
    protocol: MqttProtocol = MqttProtocol.V5
    client_id: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in logs
    tls: TlsConfig | None = None
    keepalive_s: int = 60
    session_expiry_s: int = 86400
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    topic: str = "application/+/device/+/event/+"
    # Downlinks go to this topic ({application_id}, {dev_eui} filled in).
    downlink_topic: str = "application/{application_id}/device/{dev_eui}/command/down"
    # Used for a device's downlink until one of its events names its application.
    application_id: str | None = None
    max_event_bytes: int = 32 * 1024
    dedup_window: int = 10_000  # deduplicationIds remembered
    unknown_devices_tracked: int = 256  # distinct unregistered DevEUIs counted by name
    downlink_queue: int = 100  # downlinks waiting for the connection


@dataclass(frozen=True)
class TcpConfig:
    """``[[tcp]]``: NB-IoT devices that connect and send Milesight cellular frames."""

    name: str
    host: str
    port: int
    format: UdpFormat = UdpFormat.MILESIGHT_NB
    max_connections: int = 64
    idle_timeout_s: float = 60.0
    max_frame_bytes: int = 4096


@dataclass(frozen=True)
class SlaveConfig:
    address: int
    profile: DeviceProfile
    role: SlaveRole
    poll_interval_s: float = 1.0
    unit: str = "m"  # of a water level's value


@dataclass(frozen=True)
class ModbusConfig:
    name: str
    port: str
    slaves: tuple[SlaveConfig, ...]
    baudrate: int = 9600
    parity: str = "N"
    timeout_s: float = 0.5
    retries: int = 1
    backoff_max_s: float = 60.0
    reopen_min_s: float = 1.0
    reopen_max_s: float = 30.0


@dataclass(frozen=True)
class Thresholds:
    """Alarm thresholds: ``[alarms]``, overridden by ``[alarms.kind.X]`` and registry columns."""

    tilt_deg: float = 15.0
    tilt_clear_margin_deg: float = 2.0
    water_high_mm: float = 500.0
    water_overflow_mm: float = 200.0
    water_clear_margin_mm: float = 100.0
    low_battery_mv: float = 3300.0
    low_battery_clear_mv: float = 3400.0
    offline_after_s: float = 2700.0  # 3 missed 15-minute reports
    hold_s: float = 3.0  # polled sensors: condition held this long to raise or clear
    report_count: int = 2  # radio REPORTs: consecutive reports to raise or clear
    fault_after_failures: int = 3
    gas: dict[str, float] = field(
        default_factory=lambda: {"CH4": 10.0, "H2S": 10.0, "CO": 35.0, "O2": 19.5}
    )
    gas_clear_margin: dict[str, float] = field(
        default_factory=lambda: {"CH4": 2.0, "H2S": 2.0, "CO": 5.0, "O2": 0.5}
    )

    def merged(self, overrides: Mapping[str, Any]) -> Thresholds:
        if not overrides:
            return self
        values = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key, value in overrides.items():
            if key.startswith("gas_"):
                values["gas"] = {**values["gas"], key[4:]: value}
            else:
                values[key] = value
        return Thresholds(**values)


THRESHOLD_KEYS = tuple(
    k for k in Thresholds.__dataclass_fields__ if k not in ("gas", "gas_clear_margin")
) + tuple(f"gas_{g.name}" for g in GasKind)

THRESHOLD_RANGES: dict[str, tuple[float, float]] = {
    "tilt_deg": (0.5, 90.0),
    "tilt_clear_margin_deg": (0.0, 45.0),
    "water_high_mm": (0.0, 20_000.0),
    "water_overflow_mm": (0.0, 20_000.0),
    "water_clear_margin_mm": (0.0, 5_000.0),
    "low_battery_mv": (0.0, 10_000.0),
    "low_battery_clear_mv": (0.0, 10_000.0),
    "offline_after_s": (1.0, 7 * 86_400.0),
    "hold_s": (0.0, 3_600.0),
    "report_count": (1, 100),
    "fault_after_failures": (1, 100),
    "gas_CH4": (0.0, 100.0),  # %LEL
    "gas_H2S": (0.0, 1_000.0),  # ppm
    "gas_CO": (0.0, 2_000.0),  # ppm
    "gas_O2": (0.0, 100.0),  # %vol (an alarm below it)
}
"""Where each threshold may be set: in ``[alarms]``, ``[alarms.kind.X]`` and registry
columns alike. Outside, a value can only silence an alarm or raise it for ever."""
INTEGER_THRESHOLDS = ("report_count", "fault_after_failures")

GATEWAY_ID_MAX = 64
UNIX_PATH_MAX = 107  # sun_path less its terminating NUL (Linux)


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits]``: the bounds of the edge engine's per-key state (see ``gateway.edge.bounds``)."""

    unregistered_nodes: int = 256  # ids not in the registry tracked at once; LRU forgotten first
    device_frames_per_minute: int = 60  # per device; above it readings are not forwarded
    recent_frames_bytes: int = 2 * 1024 * 1024  # the technician's frame history, all devices


@dataclass(frozen=True)
class GatewayConfig:
    gateway_id: str
    state_dir: Path
    registry: Path | None
    uplink: UplinkConfig
    queue: QueueConfig
    radios: tuple[RadioConfig, ...]
    udp: tuple[UdpConfig, ...]
    modbus: tuple[ModbusConfig, ...]
    thresholds: Thresholds
    kind_thresholds: dict[str, dict[str, Any]]
    digest: str  # of the file's bytes: tells the platform which config is in force
    control_socket: Path | None = None
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    console: ConsoleConfig | None = None
    lorawan: tuple[LorawanConfig, ...] = ()
    tcp: tuple[TcpConfig, ...] = ()
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    commands: CommandsConfig = field(default_factory=CommandsConfig)
    control_max_clients: int = 16

    @property
    def topic_root(self) -> str:
        return f"covers/{self.gateway_id}"

    @property
    def queue_path(self) -> Path:
        return self.state_dir / "queue.db"

    @property
    def control_path(self) -> Path:
        return self.control_socket or self.state_dir / "control.sock"


def _threshold_overrides(t: Table) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in THRESHOLD_KEYS:
        if t.has(key):
            lo, hi = THRESHOLD_RANGES[key]
            value = (
                t.integer(key, None, lo=int(lo), hi=int(hi))
                if key in INTEGER_THRESHOLDS
                else t.number(key, None, lo=lo, hi=hi)
            )
            if value is not None:
                out[key] = value
    return out


def _uplink(t: Table, gateway_id: str, base_dir: Path) -> UplinkConfig:
    tls = _tls_table(t.table("tls"), base_dir)
    password = _password(t, base_dir)
    reconnect_min = t.number("reconnect_min_s", 1.0, lo=0.01, hi=3600)
    hosts = t.convert("hosts", _host_list, ())
    if hosts and (t.has("host") or t.has("port")):
        raise ConfigError(t.key("hosts"), "give host/port or hosts, not both")
    config = UplinkConfig(
        host=t.text("host", "127.0.0.1"),
        port=t.integer("port", 8883 if tls else 1883, lo=1, hi=65535),
        protocol=t.choice("protocol", MqttProtocol, MqttProtocol.AUTO),
        client_id=t.text("client_id", f"covergw-{gateway_id}"),
        username=t.text("username", None),
        password=password,
        keepalive_s=t.integer("keepalive_s", 60, lo=5, hi=3600),
        max_inflight=t.integer("max_inflight", 20, lo=1, hi=1000),
        publish_timeout_s=t.number("publish_timeout_s", 10.0, lo=0.1, hi=600),
        session_expiry_s=t.integer("session_expiry_s", 86400, lo=0, hi=2**32 - 1),
        reconnect_min_s=reconnect_min,
        reconnect_max_s=t.number("reconnect_max_s", 60.0, lo=reconnect_min, hi=86400),
        telemetry_batch_max=t.integer("telemetry_batch_max", 100, lo=1, hi=10_000),
        telemetry_batch_bytes=t.integer("telemetry_batch_bytes", 64 * 1024, lo=1024, hi=2**27),
        drain_max_rate=t.integer("drain_max_rate", 100_000, lo=0, hi=10_000_000),
        stats_interval_s=t.number("stats_interval_s", 60.0, lo=0.1, hi=86400),
        tls=tls,
        hosts=hosts,
        telemetry_encoding=t.choice(
            "telemetry_encoding", TelemetryEncoding, TelemetryEncoding.JSON
        ),
    )
    t.done()
    return config


def read_secret(key: str, path: Path) -> str:
    """A secret's file: only its owner may read it; its content never appears in an error."""
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise ConfigError(
                key,
                f"{path} is open to group or others (mode {mode & 0o777:o}); "
                "only the daemon's user may read it: chmod 600",
            )
        return path.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise ConfigError(key, f"cannot read {path}: {err.strerror or err}") from err
    except UnicodeDecodeError as err:
        raise ConfigError(key, f"{path} is not UTF-8 text") from err


def _check_tls(t: Table, tls: TlsConfig) -> None:
    """Load the CA and key pair now, as the uplink will: a bad file is a config error."""

    def no_passphrase() -> str:
        raise ValueError("an encrypted key_file is not supported (nobody can type a passphrase)")

    try:
        context = ssl.create_default_context(cafile=str(tls.ca_file))
    except (ssl.SSLError, OSError, ValueError) as err:
        raise ConfigError(t.key("ca_file"), f"not a usable CA file: {err}") from err
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            context.load_cert_chain(str(tls.cert_file), str(tls.key_file), password=no_passphrase)
        except (ssl.SSLError, OSError, ValueError) as err:
            raise ConfigError(t.key("key_file"), f"cert_file and key_file unusable: {err}") from err


def ip_hostport(value: object) -> tuple[str, int]:
    """``HOST:PORT`` where HOST is an IP address: what a socket binds to, never a name."""
    host, port = hostport(value)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(
            f"must be IP:PORT (an address to bind, not a name), got {value!r}"
        ) from None
    return host, port


def _host_list(value: object) -> tuple[tuple[str, int], ...]:
    """``["host:port", ...]``: a broker cluster's nodes, one to fail over to after another."""
    if not isinstance(value, list) or not value:
        raise ValueError(f'must be a non-empty list of "host:port", got {value!r}')
    if len(value) > 64:
        raise ValueError(f"at most 64 addresses, got {len(value)}")
    return tuple(hostport(v) for v in value)


def _existing(value: object, base_dir: Path) -> Path:
    if not isinstance(value, str) or not value:
        raise ValueError(f"must be a file path, got {value!r}")
    path = Path(value) if Path(value).is_absolute() else base_dir / value
    if not path.is_file():
        raise ValueError(f"no such file: {path}")
    return path


def _slave(t: Table, profiles: dict[str, DeviceProfile]) -> SlaveConfig:
    name = t.text("profile")
    if name not in profiles:
        raise ConfigError(t.key("profile"), f"unknown profile {name!r} (have {sorted(profiles)})")
    profile = profiles[name]
    role = t.choice("role", SlaveRole, DEFAULT_ROLES.get(name, SlaveRole.NONE))
    fields = {f.name for f in profile.fields}
    needed = {SlaveRole.TILT: {"roll_deg", "pitch_deg"}, SlaveRole.WATER_LEVEL: {"level"}}
    missing = needed.get(role, set()) - fields
    if missing:
        raise ConfigError(t.key("role"), f"{role.value} needs fields {sorted(missing)} in {name}")
    unit = t.text("unit", "m")
    if role is SlaveRole.WATER_LEVEL and unit not in LEVEL_UNITS_MM:
        raise ConfigError(t.key("unit"), f"must be one of {', '.join(LEVEL_UNITS_MM)}")
    slave = SlaveConfig(
        address=t.integer("address", lo=1, hi=247),
        profile=profile,
        role=role,
        poll_interval_s=t.number("poll_interval_s", 1.0, lo=0.05, hi=86400),
        unit=unit,
    )
    t.done()
    return slave


def _names_unique(items: list[Any], path: str) -> None:
    names = [i.name for i in items]
    for name in names:
        if names.count(name) > 1:
            raise ConfigError(path, f"name {name!r} is used twice")


def _port_names_unique(
    radios: list[RadioConfig], udp: list[UdpConfig], buses: list[ModbusConfig]
) -> None:
    for items, path in ((radios, "radio"), (udp, "udp"), (buses, "modbus")):
        _names_unique(items, path)
    sources = [r.name for r in radios] + [u.name for u in udp] + [b.name for b in buses]
    if len(set(sources)) != len(sources):
        raise ConfigError("radio/udp/modbus", "every port needs its own name")


def _ports(
    root: Table, profiles: dict[str, DeviceProfile]
) -> tuple[list[RadioConfig], list[UdpConfig], list[ModbusConfig]]:
    radios = []
    for t in root.tables("radio"):
        init = t.convert("init", _strings, ())
        radios.append(
            RadioConfig(
                name=t.text("name"),
                port=t.text("port"),
                baudrate=t.integer("baudrate", 9600, lo=300, hi=4_000_000),
                dialect=t.choice("dialect", Dialect, Dialect.TRANSPARENT),
                rssi_append=t.flag("rssi_append", False),
                init=init,
                reopen_min_s=t.number("reopen_min_s", 1.0, lo=0.01),
                reopen_max_s=t.number("reopen_max_s", 30.0, lo=0.01),
            )
        )
        t.done()
    udp = []
    for t in root.tables("udp"):
        host, port = t.convert("bind", ip_hostport)
        allow = t.convert("allow", _networks, ())
        if not allow and not ipaddress.ip_address(host).is_loopback:
            raise ConfigError(
                t.key("allow"),
                f"is required when binding {host} (not loopback): list the networks "
                'your nodes send from, e.g. allow = ["10.20.0.0/16"]',
            )
        udp.append(
            UdpConfig(
                t.text("name"),
                host,
                port,
                allow=allow,
                format=t.choice("format", UdpFormat, UdpFormat.SCN1),
                source_rate=t.number("source_rate", SOURCE_RATE, lo=0.01, hi=100_000),
                source_burst=t.integer("source_burst", SOURCE_BURST, lo=1, hi=1_000_000),
                max_sources=t.integer("max_sources", MAX_SOURCES, lo=1, hi=1_000_000),
            )
        )
        t.done()
    buses = []
    for t in root.tables("modbus"):
        slaves = tuple(_slave(st, profiles) for st in t.tables("slaves"))
        addresses = [s.address for s in slaves]
        if len(set(addresses)) != len(addresses):
            raise ConfigError(t.key("slaves"), f"slave addresses repeat: {addresses}")
        buses.append(
            ModbusConfig(
                name=t.text("name"),
                port=t.text("port"),
                slaves=slaves,
                baudrate=t.integer("baudrate", 9600, lo=300, hi=4_000_000),
                parity=t.text("parity", "N"),
                timeout_s=t.number("timeout_s", 0.5, lo=0.01, hi=60),
                retries=t.integer("retries", 1, lo=0, hi=10),
                backoff_max_s=t.number("backoff_max_s", 60.0, lo=0.1),
                reopen_min_s=t.number("reopen_min_s", 1.0, lo=0.01),
                reopen_max_s=t.number("reopen_max_s", 30.0, lo=0.01),
            )
        )
        if buses[-1].parity not in ("N", "E", "O"):
            raise ConfigError(t.key("parity"), "must be N, E or O")
        t.done()
    return radios, udp, buses


def _tls_table(tt: Table, base_dir: Path) -> TlsConfig | None:
    """A ``tls`` sub-table (uplink, lorawan): enabled, ca_file, cert_file, key_file, loaded now."""
    tls = None
    if tt.flag("enabled", False):
        ca = tt.convert("ca_file", lambda v: _existing(v, base_dir))
        cert = tt.convert("cert_file", lambda v: _existing(v, base_dir), None)
        key = tt.convert("key_file", lambda v: _existing(v, base_dir), None)
        if (cert is None) != (key is None):
            raise ConfigError(tt.key("key_file"), "cert_file and key_file go together")
        tls = TlsConfig(ca, cert, key)
        _check_tls(tt, tls)
    else:
        for k in ("ca_file", "cert_file", "key_file"):
            tt.text(k, None)
    tt.done()
    return tls


def _password(t: Table, base_dir: Path) -> str | None:
    """``password`` or ``password_file`` (not readable by others); never in an error."""
    password: str | None = t.text("password", None, secret=True)
    password_file = t.convert("password_file", lambda v: _existing(v, base_dir), None)
    if password_file is not None:
        if password is not None:
            raise ConfigError(t.key("password_file"), "give password or password_file, not both")
        password = read_secret(t.key("password_file"), password_file)
    return password


def _lorawan(t: Table, gateway_id: str, base_dir: Path) -> LorawanConfig:
    name = t.text("name")
    tls = _tls_table(t.table("tls"), base_dir)
    reconnect_min = t.number("reconnect_min_s", 1.0, lo=0.01, hi=3600)
    topic = t.text("topic", "application/+/device/+/event/+")
    if not topic or "#" in topic[:-1] or topic.endswith("/"):
        raise ConfigError(t.key("topic"), f"not an MQTT topic filter: {topic!r}")
    downlink_topic = t.text(
        "downlink_topic", "application/{application_id}/device/{dev_eui}/command/down"
    )
    if "{dev_eui}" not in downlink_topic or any(c in downlink_topic for c in "+#"):
        raise ConfigError(
            t.key("downlink_topic"), "must contain {dev_eui} and no wildcard (+ or #)"
        )
    config = LorawanConfig(
        name=name,
        host=t.text("host", "127.0.0.1"),
        port=t.integer("port", 8883 if tls else 1883, lo=1, hi=65535),
        protocol=t.choice("protocol", MqttProtocol, MqttProtocol.V5),
        client_id=t.text("client_id", f"covergw-{gateway_id}-{name}"),
        username=t.text("username", None),
        password=_password(t, base_dir),
        tls=tls,
        keepalive_s=t.integer("keepalive_s", 60, lo=5, hi=3600),
        session_expiry_s=t.integer("session_expiry_s", 86400, lo=0, hi=2**32 - 1),
        reconnect_min_s=reconnect_min,
        reconnect_max_s=t.number("reconnect_max_s", 60.0, lo=reconnect_min, hi=86400),
        topic=topic,
        downlink_topic=downlink_topic,
        application_id=t.text("application_id", None),
        max_event_bytes=t.integer("max_event_bytes", 32 * 1024, lo=1024, hi=1024 * 1024),
        dedup_window=t.integer("dedup_window", 10_000, lo=16, hi=1_000_000),
        unknown_devices_tracked=t.integer("unknown_devices_tracked", 256, lo=0, hi=100_000),
        downlink_queue=t.integer("downlink_queue", 100, lo=1, hi=10_000),
    )
    t.done()
    return config


def _tcp(t: Table) -> TcpConfig:
    host, port = t.convert("bind", ip_hostport)
    config = TcpConfig(
        name=t.text("name"),
        host=host,
        port=port,
        format=t.choice("format", UdpFormat, UdpFormat.MILESIGHT_NB),
        max_connections=t.integer("max_connections", 64, lo=1, hi=10_000),
        idle_timeout_s=t.number("idle_timeout_s", 60.0, lo=0.1, hi=86400),
        max_frame_bytes=t.integer("max_frame_bytes", 4096, lo=86, hi=1024 * 1024),
    )
    if config.format is not UdpFormat.MILESIGHT_NB:
        raise ConfigError(t.key("format"), "a TCP input takes only milesight-nb frames")
    t.done()
    return config


def _gateway(gw: Table, base_dir: Path) -> tuple[str, Path, Path | None, str | None, int]:
    gateway_id = gw.text("id")
    if (
        not gateway_id
        or len(gateway_id) > GATEWAY_ID_MAX
        or any(c in gateway_id for c in "/+#")
        or not gateway_id.isprintable()
    ):
        _add(
            gw,
            ConfigError(
                gw.key("id"),
                f"must be 1–{GATEWAY_ID_MAX} printable characters without / + # "
                f"(a topic level), got {gateway_id!r}",
            ),
        )
    state_dir = Path(gw.text("state_dir", "/var/lib/covergw"))
    if not state_dir.is_absolute():
        state_dir = base_dir / state_dir
    registry = gw.convert("registry", lambda v: _existing(v, base_dir), None)
    control = gw.text("control_socket", None)
    control_max_clients = gw.integer("control_max_clients", 16, lo=1, hi=256)
    socket_path = Path(control) if control else state_dir / "control.sock"
    if len(os.fsencode(socket_path)) > UNIX_PATH_MAX:
        _add(
            gw,
            ConfigError(
                gw.key("control_socket" if control else "state_dir"),
                f"the control socket path {socket_path} is longer than "
                f"{UNIX_PATH_MAX} bytes, the most a Unix socket path can be",
            ),
        )
    gw.done()
    return gateway_id, state_dir, registry, control, control_max_clients


def _add(t: Table, err: ConfigError) -> None:
    """Collect ``err`` if ``t`` collects, else raise it."""
    if t.errors is None:
        raise err
    t.errors.add(err)


def _metrics(mt: Table) -> MetricsConfig:
    m_host, m_port = mt.convert("listen", ip_hostport, ("127.0.0.1", 9108))
    metrics = MetricsConfig(
        enabled=mt.flag("enabled", False),
        host=m_host,
        port=m_port,
        max_clients=mt.integer("max_clients", 8, lo=1, hi=256),
    )
    mt.done()
    return metrics


def _console(ct: Table) -> ConsoleConfig | None:
    console = None
    if ct.has("port"):
        console = ConsoleConfig(
            ct.text("port"), ct.integer("baudrate", 115200, lo=1200, hi=4_000_000)
        )
    ct.done()
    return console


def _limits_and_commands(root: Table, errors: Errors) -> tuple[LimitsConfig, CommandsConfig]:
    limits, commands = LimitsConfig(), CommandsConfig()
    with errors.collect():
        limits = _limits(root.table("limits"))
    with errors.collect():
        commands = _commands(root.table("commands"))
    return limits, commands


def _device_inputs(
    root: Table, errors: Errors, gateway_id: str, base_dir: Path, ports: list[Any]
) -> tuple[list[LorawanConfig], list[TcpConfig]]:
    """The commercial sensors' inputs, named apart from every other port."""
    lorawan: list[LorawanConfig] = []
    tcp: list[TcpConfig] = []
    with errors.collect():
        lorawan = [_lorawan(lt, gateway_id, base_dir) for lt in root.tables("lorawan")]
        tcp = [_tcp(tt) for tt in root.tables("tcp")]
        for items, path in ((lorawan, "lorawan"), (tcp, "tcp")):
            _names_unique(items, path)
        sources = [p.name for p in (*ports, *lorawan, *tcp)]
        if len(set(sources)) != len(sources):
            raise ConfigError("radio/udp/modbus/lorawan/tcp", "every port needs its own name")
    return lorawan, tcp


def _profiles(root: Table, errors: Errors) -> dict[str, DeviceProfile]:
    """The Modbus device profiles, built in and ``[profiles]``: imported only when a
    bus or a profile is configured (a radio gateway's idle memory, docs/performance.md)."""
    if not root.has("profiles") and not root.has("modbus"):
        return {}
    from gateway.protocol.modbus_profiles import BUILTIN_PROFILES, profile_from_config  # noqa: PLC0415

    profiles = dict(BUILTIN_PROFILES)
    with errors.collect():
        pt = root.table("profiles")
        for name in pt.names():
            with errors.collect():
                if name in BUILTIN_PROFILES:
                    raise ConfigError(pt.key(name), "a built-in profile cannot be redefined")
                profiles[name] = profile_from_config(name, pt.table(name))
        pt.done()
    return profiles


def parse_config(data: dict[str, Any], *, base_dir: Path, digest: str = "") -> GatewayConfig:
    """Every error of the file in one ``InvalidConfigError``; a broken section stops alone."""
    errors = Errors()
    root = Table(data, errors=errors)
    gateway_id, state_dir, registry, control, control_max_clients = "", base_dir, None, None, 16
    with errors.collect():
        gateway_id, state_dir, registry, control, control_max_clients = _gateway(
            root.table("gateway", required=True), base_dir
        )

    uplink = UplinkConfig()
    with errors.collect():
        uplink = _uplink(root.table("uplink"), gateway_id, base_dir)

    queue = QueueConfig()
    with errors.collect():
        qt = root.table("queue")
        queue = QueueConfig(
            max_bytes=qt.integer("max_bytes", 64 * 1024 * 1024, lo=1024 * 1024),  # docs/storage.md
            flush_interval_s=qt.number("flush_interval_s", 0.2, lo=0.0, hi=10),
            flush_max=qt.integer("flush_max", 500, lo=1, hi=100_000),
        )
        qt.done()

    profiles = _profiles(root, errors)

    metrics = MetricsConfig()
    with errors.collect():
        metrics = _metrics(root.table("metrics"))

    console = None
    with errors.collect():
        console = _console(root.table("console"))

    radios: list[RadioConfig] = []
    udp: list[UdpConfig] = []
    buses: list[ModbusConfig] = []
    with errors.collect():
        radios, udp, buses = _ports(root, profiles)
        _port_names_unique(radios, udp, buses)

    thresholds = Thresholds()
    kind_thresholds: dict[str, dict[str, Any]] = {}
    with errors.collect():
        at = root.table("alarms")
        kinds = at.table("kind")
        for kind in kinds.names():
            with errors.collect():
                kt = kinds.table(kind)
                kind_thresholds[kind] = _threshold_overrides(kt)
                kt.done()
        kinds.done()
        thresholds = Thresholds().merged(_threshold_overrides(at))
        at.done()

    lorawan, tcp = _device_inputs(root, errors, gateway_id, base_dir, [*radios, *udp, *buses])
    limits, commands = _limits_and_commands(root, errors)
    root.done()
    errors.raise_if_any()
    return GatewayConfig(
        gateway_id=gateway_id,
        state_dir=state_dir,
        registry=registry,
        uplink=uplink,
        queue=queue,
        radios=tuple(radios),
        udp=tuple(udp),
        modbus=tuple(buses),
        thresholds=thresholds,
        kind_thresholds=kind_thresholds,
        digest=digest,
        control_socket=Path(control) if control else None,
        metrics=metrics,
        console=console,
        lorawan=tuple(lorawan),
        tcp=tuple(tcp),
        limits=limits,
        commands=commands,
        control_max_clients=control_max_clients,
    )


def _limits(t: Table) -> LimitsConfig:
    default = LimitsConfig()
    limits = LimitsConfig(
        unregistered_nodes=t.integer(
            "unregistered_nodes", default.unregistered_nodes, lo=0, hi=1_000_000
        ),
        device_frames_per_minute=t.integer(
            "device_frames_per_minute", default.device_frames_per_minute, lo=1, hi=1_000_000
        ),
        recent_frames_bytes=t.integer(
            "recent_frames_bytes", default.recent_frames_bytes, lo=0, hi=1 << 30
        ),
    )
    t.done()
    return limits


def _commands(t: Table) -> CommandsConfig:
    d = CommandsConfig()
    out = CommandsConfig(
        max_payload_bytes=t.integer("max_payload_bytes", d.max_payload_bytes, lo=1024, hi=1 << 20),
        max_depth=t.integer("max_depth", d.max_depth, lo=4, hi=64),
        rate_per_s=t.number("rate_per_s", d.rate_per_s, lo=0.1, hi=1000),
        burst=t.integer("burst", d.burst, lo=1, hi=10_000),
        lifetime_s=t.number("lifetime_s", d.lifetime_s, lo=10, hi=86_400),
        maintenance_max_s=t.number("maintenance_max_s", d.maintenance_max_s, lo=60, hi=30 * 86_400),
        remember_requests=t.integer("remember_requests", d.remember_requests, lo=0, hi=100_000),
    )
    t.done()
    return out


def _networks(value: object) -> tuple[Network, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value) or not value:
        raise ValueError(f"must be a non-empty list of addresses or CIDR networks, got {value!r}")
    return parse_networks(value)


def _strings(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"must be a list of strings, got {value!r}")
    return tuple(value)


def load_config(path: Path) -> GatewayConfig:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(str(path), f"cannot read: {err.strerror}") from err
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), f"not valid TOML: {err}") from err
    digest = digests.sha256(raw).hexdigest()[:16]
    return parse_config(data, base_dir=path.resolve().parent, digest=digest)
