"""Scanning an RS-485 bus: the same probe whether the tool holds the port or the daemon lends it.

A scan asks every address for one register with a short timeout chosen from
the baud rate (``reply_timeout_s``): silence means nobody is there; any reply,
an exception included, means somebody is. For the addresses that answer it
says which built-in profile the device looks like (both parts in the spec
keep their own address in a register) and, through the daemon, which
profile the configuration gives that address.

The daemon side (``serve``) is a control-socket stream: one JSON line per
address, then one summary line; the bus runs each probe between its own polls.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from gateway.drivers.modbus import (
    AdapterGoneError,
    ModbusBus,
    SlaveError,
    probe,
    read_profile,
    reply_timeout_s,
)
from gateway.drivers.rtu import ModbusLinkError, RtuMaster
from gateway.protocol.modbus_profiles import BUILTIN_PROFILES

# Where each built-in part keeps its own slave address (shared/spec/rs485-sensors.md).
IDENTITY_REGISTERS = {"qdy30a_level": 0x0000, "wit_inclinometer": 0x001A}
MAX_TIMEOUT_S = 2.0
MIN_TIMEOUT_S = 0.01


@dataclass(frozen=True, slots=True)
class ScanRow:
    address: int
    answered: bool
    exception_code: int | None = None
    meaning: str | None = None
    looks_like: tuple[str, ...] = ()
    configured: str | None = None  # the profile the daemon's config gives this address
    note: str | None = None

    def as_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["looks_like"] = list(self.looks_like)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ScanRow:
        return cls(
            address=int(data["address"]),
            answered=bool(data["answered"]),
            exception_code=data.get("exception_code"),
            meaning=data.get("meaning"),
            looks_like=tuple(data.get("looks_like") or ()),
            configured=data.get("configured"),
            note=data.get("note"),
        )


def parse_slaves(text: str) -> list[int]:
    """``1-247``, ``1,80,81``, or a mix."""
    out: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        try:
            first, last = int(low, 0), int(high or low, 0)
        except ValueError:
            raise ValueError(f"slave addresses are numbers 1–247, got {part!r}") from None
        if not 1 <= first <= last <= 247:
            raise ValueError(f"slave addresses are 1–247, got {part!r}")
        out.extend(range(first, last + 1))
    return out


async def _looks_like(client: RtuMaster, address: int, timeout_s: float) -> tuple[str, ...]:
    found = []
    for name, register in IDENTITY_REGISTERS.items():
        try:
            reply = await client.read_holding_registers(
                register, count=1, device_id=address, timeout_s=timeout_s, retries=0
            )
        except (TimeoutError, ModbusLinkError):
            continue
        if not reply.is_error and reply.registers and reply.registers[0] == address:
            found.append(name)
    return tuple(found)


async def scan_one(
    client: RtuMaster, address: int, *, timeout_s: float, configured: str | None
) -> ScanRow:
    """Probe one address; raises ``AdapterGoneError`` when the port went away under it."""
    result = await probe(client, address, timeout_s=timeout_s)
    looks_like: tuple[str, ...] = ()
    if result.answered:
        looks_like = await _looks_like(client, address, timeout_s * 2)
    return ScanRow(
        address=address,
        answered=result.answered,
        exception_code=result.exception_code,
        meaning=result.meaning,
        looks_like=looks_like,
        configured=configured,
        note=result.note,
    )


def timeout_for(baudrate: int, requested: Any) -> float:
    number = isinstance(requested, int | float) and not isinstance(requested, bool)
    if number and MIN_TIMEOUT_S <= requested <= MAX_TIMEOUT_S:
        return float(requested)
    return reply_timeout_s(baudrate)


# --- the daemon's side ---


def _find_bus(buses: Sequence[ModbusBus], request: dict[str, Any]) -> ModbusBus | None:
    name, port = request.get("bus"), request.get("port")
    for bus in buses:
        if isinstance(name, str) and bus.name == name:
            return bus
        if isinstance(port, str) and _same_file(port, bus.config.port):
            return bus
    if name is None and port is None and len(buses) == 1:
        return buses[0]
    return None


def _same_file(a: str, b: str) -> bool:
    """Whether two paths name the same device (a by-id link and its target); never raises."""
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except (OSError, ValueError):  # a NUL byte, a loop of links
        return False


def _line(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False)


async def serve(buses: Sequence[ModbusBus], request: dict[str, Any]) -> AsyncIterator[str]:
    """``{"cmd": "modbus", "action": "scan"|"read", "bus"|"port": …}``: JSON lines back.

    scan: ``slaves`` (list of 1–247, default all), ``timeout_s`` (default from
    the baud rate); read: ``slave`` and optionally ``profile`` (default: the
    configured one). The last line has ``done`` or ``error``.
    """
    bus = _find_bus(buses, request)
    if bus is None:
        names = [f"{b.name} ({b.config.port})" for b in buses]
        yield _line({"error": f"no such bus here; the daemon has {names or 'none'}"})
        return
    action = request.get("action")
    if action == "scan":
        async for line in _scan(bus, request):
            yield line
    elif action == "read":
        yield await _read(bus, request)
    else:
        yield _line({"error": "action is scan or read"})


async def _scan(bus: ModbusBus, request: dict[str, Any]) -> AsyncIterator[str]:
    wanted = request.get("slaves")
    if wanted is None:
        addresses = list(range(1, 248))
    elif isinstance(wanted, list) and all(
        isinstance(a, int) and not isinstance(a, bool) and 1 <= a <= 247 for a in wanted
    ):
        addresses = list(dict.fromkeys(wanted))
    else:
        yield _line({"error": "slaves is a list of addresses 1–247"})
        return
    timeout_s = timeout_for(bus.config.baudrate, request.get("timeout_s"))
    answered = 0
    for address in addresses:
        configured = bus.slaves[address].config.profile.name if address in bus.slaves else None

        async def job(
            client: RtuMaster,
            address: int = address,
            configured: str | None = configured,
        ) -> ScanRow:
            return await scan_one(client, address, timeout_s=timeout_s, configured=configured)

        try:
            row = await bus.lend(job)
        except (SlaveError, AdapterGoneError) as err:
            yield _line({"error": str(err)})
            return
        answered += row.answered
        yield _line(row.as_json())
    yield _line({"done": True, "bus": bus.name, "scanned": len(addresses), "answered": answered})


async def _read(bus: ModbusBus, request: dict[str, Any]) -> str:
    slave = request.get("slave")
    if not isinstance(slave, int) or isinstance(slave, bool) or not 1 <= slave <= 247:
        return _line({"error": "slave is an address 1–247"})
    name = request.get("profile")
    if name is None and slave in bus.slaves:
        profile = bus.slaves[slave].config.profile
    else:
        known = {s.config.profile.name: s.config.profile for s in bus.slaves.values()}
        known.update(BUILTIN_PROFILES)
        if not isinstance(name, str) or name not in known:
            return _line({"error": f"give a profile: one of {sorted(known)}"})
        profile = known[name]

    async def job(client: RtuMaster) -> tuple[dict[int, int], dict[str, float]]:
        return await read_profile(client, slave, profile)

    try:
        registers, values = await bus.lend(job)
    except (SlaveError, AdapterGoneError) as err:
        return _line({"error": f"slave {slave}: {err}"})
    return _line(
        {
            "done": True,
            "slave": slave,
            "profile": profile.name,
            "values": values,
            "registers": {str(a): v for a, v in sorted(registers.items())},
        }
    )
