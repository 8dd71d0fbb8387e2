"""``covergw diag``: bus tools for a technician with a laptop and a USB adapter.

``sniff`` decodes what a radio module delivers, live; ``modbus scan`` finds
which addresses answer; ``modbus read`` takes one reading through a device
profile. A port the daemon holds is not fought over: the tools say so.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import serial
import serial_asyncio_fast

from gateway.control import follow
from gateway.drivers.modbus import AdapterGoneError, SlaveError, read_profile, reply_timeout_s
from gateway.drivers.portlock import PortBusyError, PortLock
from gateway.drivers.rtu import RtuMaster
from gateway.protocol.framing import IDLE_GAP_S, Item, Received, make_framer
from gateway.protocol.modbus_profiles import DeviceProfile
from gateway.protocol.render import describe
from gateway.tools.busscan import ScanRow, parse_slaves, scan_one

__all__ = ["modbus_read", "modbus_scan", "parse_slaves", "sniff"]

DEFAULT_SOCKET = Path("/var/lib/covergw/control.sock")

EXIT_BUSY = 3
BUSY_HINT = (
    "{port} is held by another program, most likely the covergw daemon.\n"
    "Ask the daemon instead:  covergw diag tail  (radio),  covergw status,  or on its console "
    "'modbus read BUS SLAVE'  (or stop it: systemctl stop covergw)"
)


def quiet_pymodbus() -> None:
    """pymodbus logs every silent address at ERROR; a scan's table says it better."""
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)


def _stamp() -> str:
    return datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]


async def sniff(
    port: str,
    *,
    baudrate: int,
    dialect: str,
    rssi_append: bool,
    raw: bool,
    save: BinaryIO | None,
    count: int | None,
    duration_s: float | None,
    out: TextIO,
    err: TextIO,
    as_json: bool = False,
) -> int:
    try:
        reader, writer = await serial_asyncio_fast.open_serial_connection(
            url=port, baudrate=baudrate, exclusive=True
        )
    except serial.SerialException as error:
        if "exclusively lock" in str(error) or "Resource temporarily unavailable" in str(error):
            print(BUSY_HINT.format(port=port), file=err)
            return EXIT_BUSY
        print(f"cannot open {port}: {error}", file=err)
        return 2
    framer = make_framer(dialect, rssi_append=rssi_append)
    print(f"listening on {port} at {baudrate} baud ({dialect}); Ctrl-C stops", file=err, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    deadline = None if duration_s is None else time.monotonic() + duration_s
    frames = 0
    try:
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            try:
                data = await asyncio.wait_for(reader.read(4096), IDLE_GAP_S)
            except TimeoutError:
                items: Iterable[Item] = framer.idle()
            else:
                if not data:
                    print(f"{port} closed", file=err)
                    break
                if save is not None:
                    save.write(data)
                    save.flush()
                items = framer.feed(data)
            for item in items:
                print(f"{_stamp()}  {describe(item, raw=raw)}", file=out, flush=True)
                frames += isinstance(item, Received)
            if count is not None and frames >= count:
                break
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        writer.close()
    print_summary(framer.stats.as_dict(), err, as_json=as_json)
    return 0


def print_summary(counters: dict[str, int], err: TextIO, *, as_json: bool) -> None:
    """The framer's counters: one JSON object, or a small table of the non-zero ones."""
    if as_json:
        print(json.dumps({"summary": counters}), file=err)
        return
    shown = {k: v for k, v in counters.items() if v} or {"frames": 0}
    width = max(len(k) for k in shown)
    print("summary:", file=err)
    for name, value in shown.items():
        print(f"  {name.replace('_', ' '):<{width}}  {value:>8}", file=err)


def _client(port: str, baudrate: int, timeout_s: float) -> RtuMaster:
    return RtuMaster(port, baudrate=baudrate, timeout_s=timeout_s, retries=0)


def _busy(port: str, err: TextIO, *, quiet: bool = False) -> int | None:
    """Why the port cannot be had (the exit status), or None if it is free.

    The RTU master opens ports exclusively too, so this only probes the lock to
    be able to say who holds the port, then lets go before the master opens it.
    """
    try:
        with PortLock(port):
            return None
    except PortBusyError:
        if not quiet:
            print(BUSY_HINT.format(port=port), file=err)
        return EXIT_BUSY
    except OSError as error:
        print(f"cannot open {port}: {error.strerror}", file=err)
        return 2


def _render_row(row: ScanRow) -> str:
    if not row.answered:
        answer, detail = "silent", ""
    elif row.exception_code is not None:
        answer, detail = "answers", f"exception {row.exception_code}: {row.meaning}"
    else:
        answer, detail = "answers", row.note or ""
    profile = ", ".join(row.looks_like) or "-"
    if row.configured:
        profile += f" (configured: {row.configured})"
    return f"0x{row.address:02X} {row.address:>5}  {answer:<8} {detail:<36} {profile}".rstrip()


SCAN_HEADER = f"{'addr':<4} {'dec':>5}  {'answer':<8} {'exception':<36} profile"


class ScanPrinter:
    """A table for people (answered addresses only, unless ``--all``) or JSON lines."""

    def __init__(self, out: TextIO, *, as_json: bool, show_all: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.show_all = show_all
        self.rows: list[ScanRow] = []

    def row(self, row: ScanRow) -> None:
        if not self.rows and not self.as_json:
            print(SCAN_HEADER, file=self.out, flush=True)
        self.rows.append(row)
        if self.as_json:
            print(json.dumps(row.as_json()), file=self.out, flush=True)
        elif row.answered or self.show_all:
            print(_render_row(row), file=self.out, flush=True)

    def summary(self, elapsed_s: float, err: TextIO) -> None:
        answered = sum(r.answered for r in self.rows)
        print(
            f"{answered} of {len(self.rows)} addresses answered ({elapsed_s:.1f} s)",
            file=err,
        )


async def modbus_scan(
    port: str | None,
    *,
    baudrate: int,
    slaves: list[int],
    timeout_s: float | None,
    out: TextIO,
    err: TextIO,
    bus: str | None = None,
    socket: Path | None = None,
    as_json: bool = False,
    show_all: bool = False,
) -> int:
    """Scan directly when the port is free, else through the running daemon."""
    quiet_pymodbus()
    printer = ScanPrinter(out, as_json=as_json, show_all=show_all)
    started = time.monotonic()
    if port is not None and bus is None:
        busy = _busy(port, err, quiet=True)
        if busy is None:
            code = await _scan_direct(
                port,
                baudrate=baudrate,
                slaves=slaves,
                timeout_s=timeout_s,
                printer=printer,
                err=err,
            )
            if code == 0:
                printer.summary(time.monotonic() - started, err)
            return code
        if busy != EXIT_BUSY:
            return busy
    request: dict[str, Any] = {"cmd": "modbus", "action": "scan", "slaves": slaves}
    if timeout_s is not None:
        request["timeout_s"] = timeout_s
    request.update({"bus": bus} if bus else {"port": port} if port else {})
    code = await _through_daemon(port, socket, request, printer.row, err)
    if code == 0:
        printer.summary(time.monotonic() - started, err)
    return code


async def _scan_direct(
    port: str,
    *,
    baudrate: int,
    slaves: list[int],
    timeout_s: float | None,
    printer: ScanPrinter,
    err: TextIO,
) -> int:
    timeout = timeout_s if timeout_s is not None else reply_timeout_s(baudrate)
    client = _client(port, baudrate, max(timeout, 0.05))
    if not await client.connect():
        print(f"cannot open {port}", file=err)
        return 2
    try:
        for address in slaves:
            try:
                row = await scan_one(client, address, timeout_s=timeout, configured=None)
            except AdapterGoneError as error:
                print(f"scan stopped at address {address}: {error}", file=err)
                return 1
            printer.row(row)
    finally:
        client.close()
    return 0


async def _through_daemon(
    port: str | None,
    socket: Path | None,
    request: dict[str, Any],
    on_row: Callable[[ScanRow], None],
    err: TextIO,
) -> int:
    path = socket or DEFAULT_SOCKET
    if not path.exists():
        if port is not None:
            print(BUSY_HINT.format(port=port), file=err)
            return EXIT_BUSY
        print(f"no daemon socket at {path} (give --port, or --socket PATH)", file=err)
        return 2
    try:
        async for line in follow(path, request):
            data = json.loads(line)
            if "error" in data:
                print(f"daemon: {data['error']}", file=err)
                return 1
            if data.get("done"):
                return 0
            on_row(ScanRow.from_json(data))
    except (OSError, json.JSONDecodeError) as error:
        print(f"cannot ask the daemon at {path}: {error}", file=err)
        return 2
    print("the daemon ended the scan without a word (stopped?)", file=err)
    return 1


async def modbus_read(
    port: str | None,
    *,
    baudrate: int,
    slave: int,
    profile: DeviceProfile,
    timeout_s: float | None,
    out: TextIO,
    err: TextIO,
    bus: str | None = None,
    socket: Path | None = None,
) -> int:
    """One reading through a profile: directly when the port is free, else via the daemon."""
    quiet_pymodbus()
    if port is not None and bus is None:
        busy = _busy(port, err, quiet=True)
        if busy is None:
            return await _read_direct(
                port, baudrate=baudrate, slave=slave, profile=profile, timeout_s=timeout_s,
                out=out, err=err,
            )  # fmt: skip
        if busy != EXIT_BUSY:
            return busy
    request: dict[str, Any] = {
        "cmd": "modbus", "action": "read", "slave": slave, "profile": profile.name,
    }  # fmt: skip
    request.update({"bus": bus} if bus else {"port": port} if port else {})
    path = socket or DEFAULT_SOCKET
    if not path.exists():
        print(BUSY_HINT.format(port=port) if port else f"no daemon socket at {path}", file=err)
        return EXIT_BUSY if port else 2
    try:
        async for line in follow(path, request):
            data = json.loads(line)
            if "error" in data:
                print(f"daemon: {data['error']}", file=err)
                return 1
            registers = {int(a): int(v) for a, v in data["registers"].items()}
            _print_reading(slave, profile, registers, out)
            return 0
    except (OSError, json.JSONDecodeError, KeyError, ValueError) as error:
        print(f"cannot ask the daemon at {path}: {error}", file=err)
        return 2
    print("the daemon ended the read without a word (stopped?)", file=err)
    return 1


async def _read_direct(
    port: str,
    *,
    baudrate: int,
    slave: int,
    profile: DeviceProfile,
    timeout_s: float | None,
    out: TextIO,
    err: TextIO,
) -> int:
    client = _client(port, baudrate, timeout_s if timeout_s is not None else 0.5)
    if not await client.connect():
        print(f"cannot open {port}", file=err)
        return 2
    try:
        registers, _ = await read_profile(client, slave, profile)
    except SlaveError as error:
        print(f"slave {slave}: {error}", file=err)
        return 1
    finally:
        client.close()
    _print_reading(slave, profile, registers, out)
    return 0


def _print_reading(
    slave: int, profile: DeviceProfile, registers: dict[int, int], out: TextIO
) -> None:
    print(f"slave 0x{slave:02X} ({slave}) through profile {profile.name}:", file=out)
    for field in profile.fields:
        value = field.decode(registers)
        words = " ".join(f"{registers[a]:04X}" for a in field.addresses())
        where = f"0x{field.address:04X}: {words}"
        print(f"  {field.name:<16} {value:>12.4f} {field.unit:<6}  registers {where}", file=out)
    raw = " ".join(f"{a:04X}={v:04X}" for a, v in sorted(registers.items()))
    print(f"  raw: {raw}", file=out)
