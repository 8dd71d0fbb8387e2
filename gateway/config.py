"""The gateway's configuration: TOML validated once, at start, into frozen objects.

Every mistake is refused before anything opens, with its key path and the
reason (``uplink.port: must be 1–65535, got 70000``). Defaults live here and
nowhere else; deploy/covergw.toml documents every key.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from gateway.confcheck import Table, hostport
from gateway.errors import ConfigError
from gateway.protocol.messages import GasKind
from gateway.protocol.modbus_profiles import BUILTIN_PROFILES, DeviceProfile, profile_from_config


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
    stats_interval_s: float = 60.0
    tls: TlsConfig | None = None
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


@dataclass(frozen=True)
class UdpConfig:
    name: str
    host: str
    port: int


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

    def merged(self, overrides: dict[str, Any]) -> Thresholds:
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
            if key in ("report_count", "fault_after_failures"):
                out[key] = t.integer(key, lo=1, hi=100)
            else:
                out[key] = t.number(key, lo=0)
    return out


def _uplink(t: Table, gateway_id: str, base_dir: Path) -> UplinkConfig:
    tls = None
    tt = t.table("tls")
    if tt.flag("enabled", False):
        ca = tt.convert("ca_file", lambda v: _existing(v, base_dir))
        cert = tt.convert("cert_file", lambda v: _existing(v, base_dir), None)
        key = tt.convert("key_file", lambda v: _existing(v, base_dir), None)
        if (cert is None) != (key is None):
            raise ConfigError(tt.key("key_file"), "cert_file and key_file go together")
        tls = TlsConfig(ca, cert, key)
    else:
        for k in ("ca_file", "cert_file", "key_file"):
            tt.text(k, None)
    tt.done()
    password = t.text("password", None)
    password_file = t.convert("password_file", lambda v: _existing(v, base_dir), None)
    if password_file is not None:
        if password is not None:
            raise ConfigError(t.key("password_file"), "give password or password_file, not both")
        password = password_file.read_text(encoding="utf-8").strip()
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
        stats_interval_s=t.number("stats_interval_s", 60.0, lo=0.1, hi=86400),
        tls=tls,
        hosts=hosts,
    )
    t.done()
    return config


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
        host, port = t.convert("bind", hostport)
        udp.append(UdpConfig(t.text("name"), host, port))
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


def parse_config(data: dict[str, Any], *, base_dir: Path, digest: str = "") -> GatewayConfig:
    root = Table(data)
    gw = root.table("gateway", required=True)
    gateway_id = gw.text("id")
    if not gateway_id or any(c in gateway_id for c in "/+#") or not gateway_id.isprintable():
        raise ConfigError(
            gw.key("id"), f"must be non-empty without / + # (a topic level), got {gateway_id!r}"
        )
    state_dir = Path(gw.text("state_dir", "/var/lib/covergw"))
    if not state_dir.is_absolute():
        state_dir = base_dir / state_dir
    registry = gw.convert("registry", lambda v: _existing(v, base_dir), None)
    control = gw.text("control_socket", None)
    gw.done()

    uplink = _uplink(root.table("uplink"), gateway_id, base_dir)

    qt = root.table("queue")
    queue = QueueConfig(
        max_bytes=qt.integer("max_bytes", 64 * 1024 * 1024, lo=64 * 1024),
        flush_interval_s=qt.number("flush_interval_s", 0.2, lo=0.0, hi=10),
        flush_max=qt.integer("flush_max", 500, lo=1, hi=100_000),
    )
    qt.done()

    profiles = dict(BUILTIN_PROFILES)
    pt = root.table("profiles")
    for name in pt.names():
        if name in BUILTIN_PROFILES:
            raise ConfigError(pt.key(name), "a built-in profile cannot be redefined")
        profiles[name] = profile_from_config(name, pt.table(name))
    pt.done()

    mt = root.table("metrics")
    m_host, m_port = mt.convert("listen", hostport, ("127.0.0.1", 9108))
    metrics = MetricsConfig(enabled=mt.flag("enabled", False), host=m_host, port=m_port)
    mt.done()

    console = None
    ct = root.table("console")
    if ct.has("port"):
        console = ConsoleConfig(
            ct.text("port"), ct.integer("baudrate", 115200, lo=1200, hi=4_000_000)
        )
    ct.done()

    radios, udp, buses = _ports(root, profiles)
    for items, path in ((radios, "radio"), (udp, "udp"), (buses, "modbus")):
        _names_unique(items, path)
    sources = [r.name for r in radios] + [u.name for u in udp] + [b.name for b in buses]
    if len(set(sources)) != len(sources):
        raise ConfigError("radio/udp/modbus", "every port needs its own name")

    at = root.table("alarms")
    kinds = at.table("kind")
    kind_thresholds = {}
    for kind in kinds.names():
        kt = kinds.table(kind)
        kind_thresholds[kind] = _threshold_overrides(kt)
        kt.done()
    kinds.done()
    thresholds = Thresholds().merged(_threshold_overrides(at))
    at.done()
    root.done()
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
    )


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
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return parse_config(data, base_dir=path.resolve().parent, digest=digest)
