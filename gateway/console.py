"""The technician's diagnostic console on a serial port of the box (its debug UART).

Plain text at 115200 8N1 for any terminal program (picocom, minicom, PuTTY):
the console echoes what is typed, takes a line at a time, ignores garbage,
and reopens its port if the cable or adapter is pulled. It never holds the
daemon up: commands read state, and output that a terminal does not take in
time is dropped and counted.

Output does not go through the serial transport: pyserial's ``write`` with a
zero write timeout spins on EAGAIN when the terminal does not read (the whole
daemon froze at 100 % CPU). ``_Output`` writes the port's descriptor itself,
non-blocking, and keeps at most ``WRITE_BACKLOG`` bytes; a line that does not
fit is dropped whole. Unknown commands get one short line, at most one per
``REPLY_EVERY_S``; the rest are counted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from gateway.config import ConsoleConfig, GatewayConfig
from gateway.drivers.base import PortHealth
from gateway.drivers.modbus import SlaveError
from gateway.drivers.serialport import keep_open
from gateway.tap import Tap
from gateway.tools.status import status_line

log = logging.getLogger(__name__)

MAX_LINE = 200
WRITE_BACKLOG = 64 * 1024  # bytes a terminal may lag behind before output is dropped
REPLY_EVERY_S = 1.0  # at most one "unknown command" line per second
CTRL_C = 0x03
BACKSPACES = (0x08, 0x7F)

HELP = """\
commands:
  help                       this list
  status                     one line: uplink, queue, alarms, ports down
  covers [N]                 the registry (first N, default 20)
  alarms                     active alarms
  tail [NODE]                live frames (all, or one node); any key stops
  queue                      the store-and-forward queue
  uplink                     the MQTT connection
  modbus read BUS SLAVE      one reading from a wired sensor, now
  frames NODE [N]            the last N frames heard from a node (default 10)
  maintenance COVER [DUR]    the owner works on a cover (alarms marked) for DUR
                             (30m, 2h, 3600; default 1h, at most 24h)
  maintenance COVER off      the work is done
  rezero COVER               the next normal reading becomes the cover's baseline
  selftest                   ports, slaves, broker, state dir, clock: one line each
  status json | alarms json  the same, as one JSON line (for scripts)"""

DEFAULT_MAINTENANCE_S = 3600.0
MAX_MAINTENANCE_S = 24 * 3600.0
CONFIRM_TIMEOUT_S = 30.0


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``: seconds, above zero and at most a day."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1.0)
    seconds = float(number) * unit
    if not 0 < seconds <= MAX_MAINTENANCE_S:
        raise ValueError(f"a duration above zero and at most 24h, got {text!r}")
    return seconds


class _Escape:
    """Swallows ANSI sequences: ESC [ ... final, ESC O x, ESC x."""

    def __init__(self) -> None:
        self.state = ""

    def swallow(self, byte: int) -> bool:
        if self.state == "":
            if byte == 0x1B:
                self.state = "esc"
                return True
            return False
        if self.state == "esc":
            self.state = {ord("["): "csi", ord("O"): "ss3"}.get(byte, "")
            return True
        if self.state == "csi" and not 0x40 <= byte <= 0x7E:
            return True  # parameters and intermediates
        self.state = ""  # the final byte of CSI, or the one byte after ESC O
        return True


class _Output:
    """Non-blocking writes to the port's descriptor with a bounded backlog.

    When the terminal does not read, whole writes that do not fit are dropped
    and counted; a write error (the cable pulled) ends output quietly, and the
    reading side notices the port is gone and reopens it.
    """

    def __init__(self, fd: int, *, limit: int = WRITE_BACKLOG) -> None:
        self._fd = fd
        self._limit = limit
        self._loop = asyncio.get_running_loop()
        self._backlog = bytearray()
        self._writing = False
        self.closed = False
        self.dropped_bytes = 0
        self.dropped_writes = 0
        os.set_blocking(fd, False)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if not self._backlog:
            data = data[self._send(data) :]
            if not data or self.closed:
                return
        if len(self._backlog) + len(data) > self._limit:
            self.dropped_bytes += len(data)
            self.dropped_writes += 1
            return
        self._backlog += data
        if not self._writing:
            self._loop.add_writer(self._fd, self._drain)
            self._writing = True

    def _send(self, data: bytes | bytearray) -> int:
        try:
            return os.write(self._fd, data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as err:
            log.debug("console output ends: %s", err)
            self.close()
            return 0

    def _drain(self) -> None:
        sent = self._send(self._backlog)
        del self._backlog[:sent]
        if not self._backlog:
            self._stop_writing()

    def _stop_writing(self) -> None:
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False

    def close(self) -> None:
        self._stop_writing()
        self.closed = True
        self.dropped_bytes += len(self._backlog)
        self._backlog.clear()


class Host(Protocol):
    """What the console needs of the running gateway."""

    tap: Tap
    config: GatewayConfig
    clock: Callable[[], float]

    def local_status(self) -> dict[str, Any]: ...
    def covers(self) -> list[dict[str, Any]]: ...
    def run_command(self, request: dict[str, Any]) -> dict[str, Any]: ...
    def modbus_read(self, bus: str, slave: int) -> Awaitable[dict[str, float]]: ...


class Console:
    def __init__(self, config: ConsoleConfig, host: Host, *, gateway_id: str) -> None:
        self.name = "console"
        self.config = config
        self.host = host
        self.gateway_id = gateway_id
        self.health = PortHealth(f"console ({config.port})", reopen_min_s=0.5, reopen_max_s=10.0)
        self._output: _Output | None = None
        self.dropped_output_bytes = 0  # by sessions that have ended
        self.refused_lines = 0  # unknown commands answered with silence (rate limit)
        self._last_refusal = -REPLY_EVERY_S

    def status(self) -> dict[str, Any]:
        out = self._output
        return {
            "kind": "console",
            "port": self.config.port,
            "state": self.health.state.value,
            "last_error": self.health.last_error,
            "dropped_output_bytes": self.dropped_output_bytes + (out.dropped_bytes if out else 0),
            "unanswered_lines": self.refused_lines,
        }

    async def run(self, stop: asyncio.Event) -> None:
        async def session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            serial_port = writer.transport.get_extra_info("serial")
            output = _Output(serial_port.fileno())
            self._output = output
            try:
                self.say(f"\ncovergw {self.gateway_id} diagnostic console. Type help.\n")
                await self._session(reader, stop)
            finally:
                output.close()  # a pulled cable ends here; keep_open reopens
                self.dropped_output_bytes += output.dropped_bytes
                self._output = None

        await keep_open(
            self.health, stop, url=self.config.port, baudrate=self.config.baudrate, session=session
        )

    def say(self, text: str) -> None:
        """Never waits: what the terminal cannot take now is dropped (and counted)."""
        if self._output is not None:
            self._output.write(text.replace("\n", "\r\n").encode("utf-8", "replace"))

    async def _session(self, reader: asyncio.StreamReader, stop: asyncio.Event) -> None:
        line = bytearray()
        escape = _Escape()
        self.say("> ")
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                read = asyncio.ensure_future(reader.read(256))
                await asyncio.wait({read, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if not read.done():
                    read.cancel()
                    return
                data = read.result()
                if not data:
                    raise ConnectionError("console port closed")
                for byte in data:
                    if escape.swallow(byte):
                        continue  # arrow keys and other terminal sequences
                    if byte in (0x0D, 0x0A):
                        if byte == 0x0A and not line:
                            continue  # the LF of a CR LF
                        self.say("\n")
                        await self._execute(line.decode("ascii", "replace").strip(), reader)
                        line.clear()
                        self.say("> ")
                    elif byte == CTRL_C:
                        line.clear()
                        self.say("^C\n> ")
                    elif byte in BACKSPACES:
                        if line:
                            line.pop()
                            self.say("\b \b")
                    elif 0x20 <= byte < 0x7F and len(line) < MAX_LINE:
                        line.append(byte)
                        self.say(chr(byte))
                    # anything else (noise, escape sequences) is ignored
        finally:
            stopper.cancel()

    async def _execute(self, text: str, reader: asyncio.StreamReader) -> None:
        words = text.split()
        if not words:
            return
        handler = self._commands().get(words[0].lower())
        if handler is None:
            now = time.monotonic()
            if now - self._last_refusal < REPLY_EVERY_S:
                self.refused_lines += 1
                return
            self._last_refusal = now
            self.say(f"unknown command {words[0][:20]!r}; type help\n")
            return
        try:
            await handler(words[1:], reader)
        except (ValueError, IndexError) as err:
            self.say(f"usage: {str(err)[:120] or text[:40]}; type help\n")
        except SlaveError as err:
            self.say(f"modbus: {err}\n")
        except TimeoutError:
            self.say("modbus: no answer in time\n")
        except Exception:
            # A command's bug must not end the console, let alone the daemon.
            log.exception("console command %r failed", words[0])
            self.say("internal error; see the log\n")

    def _commands(self) -> dict[str, Callable[[list[str], asyncio.StreamReader], Awaitable[None]]]:
        return {
            "help": self._help,
            "status": self._status,
            "covers": self._covers,
            "alarms": self._alarms,
            "tail": self._tail,
            "queue": self._queue,
            "uplink": self._uplink,
            "modbus": self._modbus,
            "maintenance": self._maintenance,
            "rezero": self._rezero,
            "frames": self._frames,
            "selftest": self._selftest,
        }

    async def _help(self, args: list[str], reader: asyncio.StreamReader) -> None:
        self.say(HELP + "\n")

    async def _status(self, args: list[str], reader: asyncio.StreamReader) -> None:
        if args == ["json"]:
            self.say(json.dumps(self.host.local_status(), ensure_ascii=False) + "\n")
            return
        stats = self.host.local_status()["stats"]
        self.say(status_line(stats) + "\n")
        for name, port in stats["ports"].items():
            extra = f" ({port['last_error']})" if port.get("last_error") else ""
            self.say(f"  {name:<10} {port['kind']:<7} {port['state']}{extra}\n")

    async def _covers(self, args: list[str], reader: asyncio.StreamReader) -> None:
        limit = int(args[0]) if args else 20
        covers = self.host.covers()
        for c in covers[:limit]:
            self.say(
                f"  {c['cover_id']:<16} {c['owner_unit']:<15} {c['sensor']:<14} {c['address']}\n"
            )
        self.say(f"{len(covers)} covers\n")

    async def _alarms(self, args: list[str], reader: asyncio.StreamReader) -> None:
        alarms = self.host.local_status()["active_alarms"]
        if args == ["json"]:
            self.say(json.dumps(alarms, ensure_ascii=False) + "\n")
            return
        for a in alarms:
            sub = f" {a['sub']}" if a["sub"] else ""
            self.say(f"  {a['subject']:<16} {a['kind']}{sub:<12} since {a['raised_at']}\n")
        self.say(f"{len(alarms)} active alarms\n")

    async def _queue(self, args: list[str], reader: asyncio.StreamReader) -> None:
        q = self.host.local_status()["stats"]["queue"]
        age = q["oldest_age_s"]
        oldest = "nothing waiting" if age is None else f"oldest {age} s"
        self.say(
            f"alarms {q['depth_alarm']}, readings {q['depth_telemetry']}, {q['bytes']} bytes, "
            f"{oldest}; evicted {q['evicted_alarm']} alarms, "
            f"{q['evicted_telemetry']} readings\n"
        )

    async def _uplink(self, args: list[str], reader: asyncio.StreamReader) -> None:
        u = self.host.local_status()["stats"]["uplink"]
        self.say(
            f"{u['state']}; connects {u['connects']}, reconnects {u['reconnects']}, "
            f"published {u['published_messages']} messages\n"
        )

    async def _tail(self, args: list[str], reader: asyncio.StreamReader) -> None:
        node = args[0].upper() if args else None
        self.say(f"tail{' ' + node if node else ''}: any key stops\n")
        async with self.host.tap.listen() as heard:
            key = asyncio.ensure_future(reader.read(64))
            try:
                while not key.done():
                    item = asyncio.ensure_future(heard.get())
                    await asyncio.wait({item, key}, return_when=asyncio.FIRST_COMPLETED)
                    if not item.done():
                        item.cancel()
                        break
                    got = item.result()
                    if node is None or got.node_hex == node:
                        self.say(got.line() + "\n")
            finally:
                key.cancel()

    async def _modbus(self, args: list[str], reader: asyncio.StreamReader) -> None:
        if len(args) != 3 or args[0] != "read":
            raise ValueError("modbus read BUS SLAVE")
        values = await self.host.modbus_read(args[1], int(args[2], 0))
        for name, value in values.items():
            self.say(f"  {name:<16} {value:.4f}\n")

    async def _maintenance(self, args: list[str], reader: asyncio.StreamReader) -> None:
        if len(args) == 2 and args[1] == "off":
            request = self._request("maintenance", cover_id=args[0], on=False)
        elif len(args) in (1, 2):
            seconds = DEFAULT_MAINTENANCE_S
            if len(args) == 2 and args[1] != "on":
                seconds = parse_duration(args[1])
            until = datetime.fromtimestamp(self.host.clock() + seconds, UTC)
            stamp = until.strftime("%Y-%m-%dT%H:%M:%S.") + f"{until.microsecond // 1000:03d}Z"
            request = self._request("maintenance", cover_id=args[0], on=True, until=stamp)
        else:
            raise ValueError("maintenance COVER [DURATION|off]")
        answer = self.host.run_command(request)
        if not answer["ok"]:
            self.say(f"refused: {answer['error']['message']}\n")
        elif answer["result"]["maintenance"]:
            self.say(f"{args[0]}: maintenance until {answer['result']['until']}\n")
        else:
            self.say(f"{args[0]}: maintenance over\n")

    async def _rezero(self, args: list[str], reader: asyncio.StreamReader) -> None:
        if len(args) != 1:
            raise ValueError("rezero COVER")
        self.say(f"re-zero {args[0]}: its next normal reading becomes the baseline. Sure? [y/N] ")
        try:
            reply = await asyncio.wait_for(self._ask(reader), CONFIRM_TIMEOUT_S)
        except TimeoutError:
            reply = ""
        if reply.strip().lower() not in ("y", "yes"):
            self.say("\nleft as it was\n")
            return
        self.say("\n")
        answer = self.host.run_command(self._request("rezero", cover_id=args[0]))
        if answer["ok"]:
            self.say(f"{args[0]}: baseline will be {answer['result']['baseline']}\n")
        else:
            self.say(f"refused: {answer['error']['message']}\n")

    async def _ask(self, reader: asyncio.StreamReader) -> str:
        """A short answer typed at a question, echoed; Enter ends it."""
        answer = bytearray()
        while len(answer) < 16:
            data = await reader.read(16)
            if not data:
                raise ConnectionError("console port closed")
            for byte in data:
                if byte in (0x0D, 0x0A):
                    return answer.decode("ascii")
                if 0x20 <= byte < 0x7F:
                    answer.append(byte)
                    self.say(chr(byte))
        return answer.decode("ascii")

    async def _frames(self, args: list[str], reader: asyncio.StreamReader) -> None:
        if len(args) not in (1, 2):
            raise ValueError("frames NODE [N]")
        last = int(args[1]) if len(args) == 2 else 10
        answer = self.host.run_command(self._request("frames", node=args[0].upper(), last=last))
        if not answer["ok"]:
            self.say(f"refused: {answer['error']['message']}\n")
            return
        frames = answer["result"]["frames"]
        for f in frames:
            rssi = "" if f["rx_rssi_dbm"] is None else f" rssi={f['rx_rssi_dbm']}"
            self.say(f"  {f['time']} {f['port']:<8} #{f['seq']:<5} {f['msg_type']:<9}{rssi}\n")
        self.say(f"{len(frames)} frames from {args[0].upper()}\n")

    async def _selftest(self, args: list[str], reader: asyncio.StreamReader) -> None:
        from gateway.tools import selftest  # noqa: PLC0415 - only when asked

        config = self.host.config
        status = self.host.local_status()["stats"]
        inside = selftest.Inside(
            port_states=status["ports"],
            read_slave=self.host.modbus_read,
            uplink_state=status["uplink"]["state"],
        )
        base = [selftest.Check("config", selftest.Verdict.OK, f"in force (digest {config.digest})")]
        checks = await selftest.run_checks(config, base, inside)
        if args == ["json"]:
            self.say(json.dumps([c.as_json() for c in checks], ensure_ascii=False) + "\n")
            return
        for check in checks:
            self.say(check.line() + "\n")
        failed = sum(c.verdict is selftest.Verdict.FAIL for c in checks)
        self.say(f"{len(checks)} checks, {failed} failed\n")

    @staticmethod
    def _request(cmd: str, **args: Any) -> dict[str, Any]:
        return {"request_id": f"console-{uuid.uuid4().hex}", "cmd": cmd, "args": args}

    def _answer(self, answer: dict[str, Any]) -> None:
        if answer["ok"]:
            self.say(f"ok: {json.dumps(answer['result'], ensure_ascii=False)}\n")
        else:
            self.say(f"refused: {answer['error']['message']}\n")
