"""``covergw selftest``: what a technician checks by hand, in one go, one line per check.

Config and registry, the state directory (writable, free space), each serial
port, each Modbus slave, the broker with the gateway's credentials (and TLS
when configured), the clock. A failed check says how to fix it. Ports the
running daemon holds are checked through it (its port state; slaves read
between its polls), so the self-test runs with the service up.

The daemon's console runs the same checks from inside (``Inside``): it knows
its own ports and buses and does not open them again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, TextIO

import aiomqtt

from gateway.config import GatewayConfig, load_config
from gateway.drivers.portlock import PortBusyError, PortLock
from gateway.errors import ConfigError
from gateway.registry import load_registry

MIN_FREE_BYTES = 64 * 1024 * 1024  # below this the queue cannot hold a long outage
BROKER_TIMEOUT_S = 10.0
EARLIEST_SANE = 1_767_225_600.0  # 2026-01-01: a clock before this was never set


class Verdict(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "FAIL"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    verdict: Verdict
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f"  -> {self.fix}" if self.fix and self.verdict is not Verdict.OK else ""
        return f"[{self.verdict.value:>4}] {self.name:<28} {self.detail}{fix}"

    def as_json(self) -> dict[str, Any]:
        return {"check": self.name, "verdict": self.verdict.value, "detail": self.detail,
                "fix": self.fix or None}  # fmt: skip


@dataclass
class Inside:
    """What the running daemon knows without opening anything again."""

    port_states: dict[str, dict[str, Any]]  # its ports' status(), by name
    read_slave: Callable[[str, int], Awaitable[dict[str, float]]]
    uplink_state: str


def check_config(path: Path) -> tuple[GatewayConfig | None, list[Check]]:
    try:
        config = load_config(path)
    except ConfigError as err:
        fix = f"edit {path}; covergw check-config --config {path} names the key"
        return None, [Check("config", Verdict.FAIL, str(err), fix)]
    checks = [Check("config", Verdict.OK, f"{path} valid (digest {config.digest})")]
    if config.registry is not None:
        try:
            registry, errors = load_registry(config.registry)
        except (ConfigError, OSError, UnicodeDecodeError) as err:
            checks.append(Check("registry", Verdict.FAIL, str(err), "fix the registry CSV"))
        else:
            if errors:
                checks.append(
                    Check("registry", Verdict.WARN,
                          f"{len(registry.covers)} covers, {len(errors)} rows left out "
                          f"(first: {errors[0]})", f"correct those rows in {config.registry}")
                )  # fmt: skip
            else:
                checks.append(Check("registry", Verdict.OK, f"{len(registry.covers)} covers"))
    return config, checks


def check_state_dir(state_dir: Path) -> Check:
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=state_dir, prefix=".selftest-") as probe:
            probe.write(b"x")
            probe.flush()
            os.fsync(probe.fileno())
        free = shutil.disk_usage(state_dir).free
    except OSError as err:
        return Check("state dir", Verdict.FAIL, f"{state_dir}: {err.strerror}",
                     f"make {state_dir} writable by the covergw user")  # fmt: skip
    detail = f"{state_dir} writable, {free // (1024 * 1024)} MiB free"
    if free < MIN_FREE_BYTES:
        return Check("state dir", Verdict.WARN, detail, "free space on that filesystem")
    return Check("state dir", Verdict.OK, detail)


def check_port(name: str, port: str, inside: Inside | None) -> Check:
    label = f"port {name}"
    if inside is not None and name in inside.port_states:
        state = inside.port_states[name]
        if state.get("state") == "open":
            return Check(label, Verdict.OK, f"{port} open in the daemon")
        return Check(label, Verdict.FAIL, f"{port} {state.get('state')}: {state.get('last_error')}",
                     "check the adapter and cable; ls -l /dev/serial/by-id/")  # fmt: skip
    try:
        with PortLock(port):
            pass
    except PortBusyError:
        return Check(label, Verdict.OK, f"{port} present, held by another program (the daemon?)")
    except OSError as err:
        fix = "plug the adapter in; check the path in the config and its permissions"
        return Check(label, Verdict.FAIL, f"{port}: {err.strerror}", fix)
    return Check(label, Verdict.OK, f"{port} opens")


async def check_slaves(config: GatewayConfig, inside: Inside | None) -> list[Check]:
    from gateway.drivers.modbus import SlaveError, read_profile  # noqa: PLC0415
    from gateway.tools.diag import _client  # noqa: PLC0415

    checks = []
    for bus in config.modbus:
        for slave in bus.slaves:
            label = f"slave {bus.name}:{slave.address}"
            try:
                if inside is not None:
                    values = await inside.read_slave(bus.name, slave.address)
                else:
                    values = await _read_direct(
                        bus.port, bus.baudrate, slave, _client, read_profile
                    )
            except (SlaveError, OSError, TimeoutError) as err:
                checks.append(
                    Check(label, Verdict.FAIL, str(err) or type(err).__name__,
                          "check wiring (A/B), power, the address and baud rate: "
                          f"covergw diag modbus scan --bus {bus.name}")
                )  # fmt: skip
                continue
            shown = ", ".join(f"{k}={v:g}" for k, v in list(values.items())[:3])
            checks.append(Check(label, Verdict.OK, f"{slave.profile.name}: {shown}"))
    return checks


async def _read_direct(port: str, baudrate: int, slave: Any, client_of: Any, read: Any) -> Any:
    from gateway.drivers.modbus import SlaveError  # noqa: PLC0415

    try:
        with PortLock(port):
            pass
    except PortBusyError as err:
        raise SlaveError("the port is held by another program; run selftest on the "
                         "daemon's console, or stop the daemon") from err  # fmt: skip
    client = client_of(port, baudrate, 0.5)
    if not await client.connect():
        raise SlaveError(f"cannot open {port}")
    try:
        _, values = await read(client, slave.address, slave.profile)
        return values
    finally:
        client.close()


def _tls_context(config: GatewayConfig) -> ssl.SSLContext | None:
    tls = config.uplink.tls
    return None if tls is None else tls.context()


async def check_broker(config: GatewayConfig) -> list[Check]:
    c = config.uplink
    where = f"{c.host}:{c.port}"
    try:
        context = _tls_context(config)
    except (OSError, ssl.SSLError) as err:
        return [Check("tls", Verdict.FAIL, f"cannot load the TLS files: {err}",
                      "check ca_file, cert_file, key_file in [uplink.tls]")]  # fmt: skip
    client = aiomqtt.Client(
        c.host,
        c.port,
        username=c.username,
        password=c.password,
        identifier=f"{c.client_id or config.gateway_id}-selftest",
        tls_context=context,
        timeout=BROKER_TIMEOUT_S,
    )
    try:
        async with asyncio.timeout(BROKER_TIMEOUT_S):
            await client.__aenter__()
    except (aiomqtt.MqttError, OSError, TimeoutError) as err:
        text = str(err) or type(err).__name__
        if context is not None and ("certificate" in text.lower() or "ssl" in text.lower()):
            fix = "the broker's certificate must chain to ca_file and name the host"
            return [Check("tls", Verdict.FAIL, f"{where}: {text}", fix)]
        refused = "not authori" in text.lower() or "bad user" in text.lower()
        fix = ("check username and password (or password_file) in [uplink]" if refused
               else f"check the network path to {where}, and that the broker runs")  # fmt: skip
        return [Check("broker", Verdict.FAIL, f"{where}: {text}", fix)]
    with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
        await client.__aexit__(None, None, None)
    checks = [Check("broker", Verdict.OK, f"{where} accepts the gateway's credentials")]
    if context is not None:
        checks.append(Check("tls", Verdict.OK, "the broker's certificate verifies"))
    return checks


def check_clock(now: float | None = None) -> Check:
    now = time.time() if now is None else now
    stamp = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(now))
    if now < EARLIEST_SANE:
        return Check(
            "clock", Verdict.FAIL, stamp, "set the time; enable NTP: timedatectl set-ntp true"
        )
    synced = _ntp_synchronised()
    if synced is None:
        return Check("clock", Verdict.WARN, f"{stamp}; NTP synchronisation unknown "
                     "(no timedatectl)", "check the time against a phone")  # fmt: skip
    if not synced:
        return Check("clock", Verdict.WARN, f"{stamp}; NTP not synchronised",
                     "timedatectl set-ntp true; allow UDP 123 out")  # fmt: skip
    return Check("clock", Verdict.OK, f"{stamp}; NTP synchronised")


def _ntp_synchronised() -> bool | None:
    if shutil.which("timedatectl") is None:
        return None
    try:
        result = subprocess.run(
            ["timedatectl", "show", "-p", "NTPSynchronized", "--value"],  # noqa: S607
            capture_output=True, text=True, timeout=5, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = result.stdout.strip()
    if result.returncode != 0 or value not in ("yes", "no"):
        return None
    return value == "yes"


async def run_checks(
    config: GatewayConfig, base: list[Check], inside: Inside | None = None
) -> list[Check]:
    checks = list(base)
    checks.append(check_state_dir(config.state_dir))
    ports = [(r.name, r.port) for r in config.radios] + [(b.name, b.port) for b in config.modbus]
    if config.console is not None:
        ports.append(("console", config.console.port))
    checks += [check_port(name, port, inside) for name, port in ports]
    checks += await check_slaves(config, inside)
    if inside is not None and inside.uplink_state == "connected":
        checks.append(Check("broker", Verdict.OK, "the daemon is connected"))
    else:
        checks += await check_broker(config)
    checks.append(check_clock())
    return checks


def render(checks: list[Check], out: TextIO) -> None:
    for check in checks:
        print(check.line(), file=out)
    failed = sum(c.verdict is Verdict.FAIL for c in checks)
    warned = sum(c.verdict is Verdict.WARN for c in checks)
    print(f"{len(checks)} checks: {failed} failed, {warned} warnings", file=out)


def exit_status(checks: list[Check]) -> int:
    return 1 if any(c.verdict is Verdict.FAIL for c in checks) else 0


async def selftest(path: Path) -> list[Check]:
    config, base = check_config(path)
    if config is None:
        return [*base, check_clock()]
    return await run_checks(config, base)
