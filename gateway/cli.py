"""``covergw``: one entry point, one sub-command per job; the work lives elsewhere."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import __version__
from gateway.errors import GatewayError

if TYPE_CHECKING:
    pass

# covergw decode --device: SCN-1 and the models of gateway.protocol.devices
# (a test checks this list against that registry, which is not imported here
# to keep start-up light).
DECODE_DEVICES = (
    "scn1",
    "em310-tilt",
    "em400-mud",
    "em400-udl",
    "em310-udl",
    "dds75-lb",
    "em400-mud-nb",
    "em400-udl-nb",
)


def _decode(args: argparse.Namespace) -> int:
    from gateway.tools import decode  # noqa: PLC0415 - keep start-up of other commands light

    if args.device != "scn1":
        if args.file is not None or not args.frames:
            args.parser.error(f"--device {args.device} decodes HEX payloads given as arguments")
        return decode.decode_device_args(args.device, args.frames, sys.stdout, fport=args.fport)
    if args.fport is not None:
        args.parser.error("--fport goes with --device MODEL")
    if not args.frames and args.file is None:
        args.parser.error("give HEX frames or --file PATH")
    if args.frames and args.file is not None:
        args.parser.error("give HEX frames or --file, not both")
    try:
        return decode.run(
            args.frames, args.file, dialect=args.dialect, rssi_append=args.rssi_append
        )
    except decode.CaptureError as err:
        print(f"covergw decode: {err}", file=sys.stderr)
        return 2


def _check_config(args: argparse.Namespace) -> int:
    from gateway.validation import check_config  # noqa: PLC0415

    if args.config and args.config_file and args.config != args.config_file:
        args.parser.error("give the configuration once: --config FILE")
    path = args.config or args.config_file
    if path is None:
        args.parser.error("give the configuration: --config FILE")
    return check_config(Path(path))


def _run(args: argparse.Namespace) -> int:
    from gateway.daemon_main import run_daemon  # noqa: PLC0415

    return run_daemon(Path(args.config))


def _columns() -> int:
    """The terminal's width as ``shutil.get_terminal_size`` finds it (COLUMNS, then stdout)."""
    try:
        columns = int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        columns = 0
    if columns <= 0 and sys.__stdout__ is not None:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns if columns > 0 else 80


class _Help(argparse.HelpFormatter):
    """argparse's formatter, told the width instead of asking ``shutil`` for it.

    argparse makes a formatter for every ``add_argument`` (to check its
    metavar), and one left to find the width itself imports ``shutil``, with
    ``bz2``, ``lzma`` and their libraries: into every start, the daemon's too,
    which never prints help (~0.3 MiB of its idle memory, docs/performance.md).
    """

    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        width = _columns() - 2 if width is None else width
        super().__init__(prog, indent_increment, max_help_position, width)


class _RawHelp(_Help, argparse.RawDescriptionHelpFormatter):
    """``RawDescriptionHelpFormatter`` (descriptions and epilogs as written), told the width."""


DEFAULT_CONFIG = "/etc/covergw/covergw.toml"
DEFAULT_SOCKET = Path("/var/lib/covergw/control.sock")


def _control_path(args: argparse.Namespace) -> Path:
    """The daemon's socket: ``--socket``, else what the config names, else the default.

    Only ``[gateway] control_socket`` and ``state_dir`` are read, and a config
    that would be refused whole still yields them: a technician asking a
    running daemon how it is must not need a config that passes every check.
    """
    if getattr(args, "socket", None):
        return Path(args.socket)
    config = Path(getattr(args, "config", None) or DEFAULT_CONFIG)
    try:
        data = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return DEFAULT_SOCKET
    gateway = data.get("gateway")
    if not isinstance(gateway, dict):
        return DEFAULT_SOCKET
    base = config.resolve().parent
    control, state_dir = gateway.get("control_socket"), gateway.get("state_dir")
    if isinstance(control, str) and control:
        return base / control
    if isinstance(state_dir, str) and state_dir:
        return base / state_dir / "control.sock"
    return DEFAULT_SOCKET


def _selftest(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415
    import json  # noqa: PLC0415

    from gateway.tools import diag, selftest  # noqa: PLC0415

    diag.quiet_pymodbus()
    logging.getLogger("gateway.uplink").setLevel(logging.CRITICAL)
    checks = asyncio.run(selftest.selftest(Path(args.config)))
    if args.json:
        print(json.dumps([c.as_json() for c in checks], ensure_ascii=False, indent=2))
    else:
        selftest.render(checks, sys.stdout)
    return selftest.exit_status(checks)


def _status(args: argparse.Namespace) -> int:
    from gateway.tools import status  # noqa: PLC0415

    return status.run(_control_path(args), as_json=args.json)


def _diag_tail(args: argparse.Namespace) -> int:
    from gateway.tools import status  # noqa: PLC0415

    return status.tail(
        _control_path(args),
        node=args.node,
        raw=args.raw,
        cover=args.cover,
        bus=args.bus,
        as_json=args.json,
    )


def _diag_sniff(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415
    import contextlib  # noqa: PLC0415

    from gateway.tools import diag  # noqa: PLC0415

    try:
        saving = open(args.save, "ab") if args.save else contextlib.nullcontext()  # noqa: SIM115
    except OSError as err:
        print(f"cannot write {args.save}: {err.strerror}", file=sys.stderr)
        return 2
    with saving as save:
        return asyncio.run(
            diag.sniff(
                args.port,
                baudrate=args.baud,
                dialect=args.dialect,
                rssi_append=args.rssi_append,
                raw=args.raw,
                save=save,
                count=args.count,
                duration_s=args.duration,
                out=sys.stdout,
                err=sys.stderr,
                as_json=args.json,
            )
        )


def _profile(args: argparse.Namespace) -> object:
    from gateway.config import load_config  # noqa: PLC0415
    from gateway.errors import ConfigError  # noqa: PLC0415
    from gateway.protocol.modbus_profiles import BUILTIN_PROFILES  # noqa: PLC0415

    profiles = dict(BUILTIN_PROFILES)
    if args.config:
        try:
            config = load_config(Path(args.config))
        except ConfigError as err:
            args.parser.error(f"config refused: {err}")
        profiles.update({s.profile.name: s.profile for b in config.modbus for s in b.slaves})
    if args.profile not in profiles:
        args.parser.error(f"unknown profile {args.profile!r}; have {sorted(profiles)}")
    return profiles[args.profile]


def _diag_modbus(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from gateway.protocol.modbus_profiles import DeviceProfile  # noqa: PLC0415
    from gateway.tools import diag  # noqa: PLC0415

    if args.port is None and args.bus is None:
        args.parser.error("give --port DEV (the tool takes it, or asks the daemon that has it) "
                          "or --bus NAME (ask the daemon)")  # fmt: skip
    socket = _control_path(args)
    if args.action == "scan":
        try:
            slaves = diag.parse_slaves(args.slaves)
        except ValueError as err:
            args.parser.error(str(err))
        return asyncio.run(
            diag.modbus_scan(
                args.port,
                baudrate=args.baud,
                slaves=slaves,
                timeout_s=args.timeout,
                out=sys.stdout,
                err=sys.stderr,
                bus=args.bus,
                socket=socket,
                as_json=args.json,
                show_all=args.all,
            )
        )
    if args.slave is None or args.profile is None:
        args.parser.error("read needs --slave and --profile")
    profile = _profile(args)
    assert isinstance(profile, DeviceProfile)
    return asyncio.run(
        diag.modbus_read(
            args.port,
            baudrate=args.baud,
            slave=args.slave,
            profile=profile,
            timeout_s=args.timeout,
            out=sys.stdout,
            err=sys.stderr,
            bus=args.bus,
            socket=socket,
        )
    )


def _diag_lorawan(args: argparse.Namespace) -> int:
    from gateway.registry import load_registry  # noqa: PLC0415
    from gateway.tools import diag_lorawan  # noqa: PLC0415

    try:
        models = diag_lorawan.parse_devices(args.device or [])
    except ValueError as err:
        args.parser.error(str(err))
    if args.registry:
        registry, _ = load_registry(Path(args.registry))
        for eui, (device, _cover) in registry.by_device.items():
            models.setdefault(eui, device.model)
    args.models = models
    return diag_lorawan.run(args, sys.stdout)


def _demo(args: argparse.Namespace) -> int:
    from firmware_sim.__main__ import resolve_scenario  # noqa: PLC0415
    from firmware_sim.scenario import load_scenario  # noqa: PLC0415
    from gateway.errors import ConfigError  # noqa: PLC0415
    from gateway.tools import demo  # noqa: PLC0415

    try:
        load_scenario(resolve_scenario(args.scenario))  # refused here, in one line
    except FileNotFoundError:
        from firmware_sim.__main__ import shipped_scenarios  # noqa: PLC0415

        args.parser.error(
            f"no scenario {args.scenario!r}: give a file or one of {shipped_scenarios()}"
        )
    except (ConfigError, ValueError, OSError, UnicodeDecodeError) as err:
        args.parser.error(f"scenario {args.scenario!r} refused: {err}")
    if args.broker is not None:
        _, _, port = args.broker.rpartition(":")
        if not port.isdigit() or not 0 < int(port) < 65536:
            args.parser.error(f"--broker is HOST:PORT, got {args.broker!r}")
    return demo.run(args.scenario, duration_s=args.duration, speed=args.speed, broker=args.broker)


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  covergw {line}" for line in lines)


def _baud(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a baud rate: {text!r}") from None
    if not 300 <= value <= 4_000_000:
        raise argparse.ArgumentTypeError(f"a baud rate is 300 to 4000000, got {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def _positive(text: str) -> float:
    """A finite number above zero (a speed or a duration)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above zero and finite, got {text!r}")
    return value


def _add_diag(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    diag = sub.add_parser(
        "diag",
        help="bus tools for a technician at the box",
        epilog=_examples(
            "diag sniff --port /dev/ttyUSB0",
            "diag modbus scan --port /dev/ttyUSB1",
            "diag tail --cover HZ-XH-000123",
        ),
        formatter_class=_RawHelp,
    ).add_subparsers(dest="tool", required=True)
    p = diag.add_parser(
        "sniff",
        help="decode what a radio module delivers, live",
        description="One line per frame (time, node, seq, type, RSSI, values) and one per "
        "rejected candidate with its reason. Ctrl-C stops; a summary of counters follows "
        "(a table, or one JSON object with --json).",
        epilog=_examples(
            "diag sniff --port /dev/ttyUSB0 --rssi-append --raw",
            "diag sniff --port /dev/ttyUSB0 --dialect at --save capture.bin --duration 60",
        ),
        formatter_class=_RawHelp,
    )
    p.add_argument("--port", required=True, metavar="DEV")
    p.add_argument("--baud", type=_baud, default=9600)
    p.add_argument("--dialect", choices=("transparent", "at"), default="transparent")
    p.add_argument("--rssi-append", action="store_true")
    p.add_argument("--raw", action="store_true", help="add each frame's bytes in hex")
    p.add_argument("--save", metavar="FILE", help="record the capture for covergw decode --file")
    p.add_argument("--count", type=_count, help="stop after this many frames")
    p.add_argument("--duration", type=_positive, help="stop after this many seconds")
    p.add_argument("--json", action="store_true", help="the summary as one JSON object")
    p.set_defaults(func=_diag_sniff, parser=p)

    p = diag.add_parser(
        "tail",
        help="what the running daemon hears and decides, live",
        description="Radio frames, Modbus readings and failures, alarm decisions and the "
        "queue's failing writes, as they happen, from the running daemon's control socket. "
        "Filters combine (the queue's lines show without --node and --cover).",
        epilog="examples:\n  covergw diag tail\n  covergw diag tail --cover HZ-XH-000123\n"
        "  covergw diag tail --node 00C0FFEE --raw\n  covergw diag tail --bus rs485-0 --json",
        formatter_class=_RawHelp,
    )
    p.add_argument("--node", metavar="ID", help="one node (8 hex digits) or BUS:ADDRESS")
    p.add_argument("--cover", metavar="COVER_ID", help="a cover's node and wired sensors")
    p.add_argument("--bus", metavar="NAME", help="one bus or radio input")
    p.add_argument("--raw", action="store_true", help="add each frame's bytes in hex")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE",
                   help="only to find the socket; need not be valid")  # fmt: skip
    p.add_argument("--socket", metavar="PATH", help="the control socket (default: from the config)")
    p.set_defaults(func=_diag_tail, parser=p)

    p = diag.add_parser(
        "modbus",
        help="scan an RS-485 bus, or read one slave through a profile",
        description="Takes the port when it is free; when the daemon holds it, asks the "
        "daemon, which runs each probe between its own polls. A scan waits a short "
        "time per address chosen from the baud rate (48 ms at 9600: 247 addresses in "
        "about 12 s) and prints address, answer, exception code and meaning, and the "
        "profile the device looks like. Exit 1 if the adapter goes away mid-scan.",
        epilog="examples:\n  covergw diag modbus scan --port /dev/ttyUSB0\n"
        "  covergw diag modbus scan --bus rs485-0 --slaves 1-10,80 --json\n"
        "  covergw diag modbus read --port /dev/ttyUSB0 --slave 0x50 --profile wit_inclinometer",
        formatter_class=_RawHelp,
    )
    p.add_argument("action", choices=("scan", "read"))
    p.add_argument("--port", metavar="DEV", help="the adapter (direct, or the daemon's bus on it)")
    p.add_argument("--bus", metavar="NAME", help="the daemon's bus of this name")
    p.add_argument("--baud", type=_baud, default=9600, help="direct use only (default 9600)")
    p.add_argument("--slaves", default="1-247", help="scan: addresses, e.g. 1-247 or 1,80")
    p.add_argument("--slave", type=lambda v: int(v, 0), help="read: the address (0x50 works)")
    p.add_argument("--profile", help="read: wit_inclinometer, qdy30a_level, or one from --config")
    p.add_argument("--config", metavar="FILE", help="user-defined profiles; the daemon's socket")
    p.add_argument("--socket", metavar="PATH", help="the daemon's control socket")
    p.add_argument(
        "--timeout", type=_positive, help="seconds per reply (default: from the baud rate)"
    )
    p.add_argument("--json", action="store_true", help="scan: one JSON object per address")
    p.add_argument("--all", action="store_true", help="scan: list silent addresses too")
    p.set_defaults(func=_diag_modbus, parser=p)

    p = diag.add_parser(
        "lorawan",
        help="live decoded uplinks from the network server's broker (ChirpStack v4)",
        description="Subscribes (read-only) to ChirpStack's MQTT integration and prints each "
        "event: uplinks decoded by the gateway's device models, joins, status, downlink "
        "outcomes, log events. Ctrl-C stops.",
        formatter_class=_Help,
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--topic", default="application/+/device/+/event/+")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument(
        "--device", action="append", metavar="DEVEUI=MODEL", help="the model of a device"
    )
    p.add_argument("--registry", metavar="CSV", help="take device models from the registry")
    p.add_argument("--json", action="store_true", help="one JSON object per event")
    p.add_argument("--count", type=int, help="stop after this many events")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.set_defaults(func=_diag_lorawan, parser=p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covergw", description="Smart manhole cover gateway", formatter_class=_Help
    )
    parser.add_argument("--version", action="version", version=f"covergw {__version__}")
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR (default INFO for run)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "decode",
        help="decode SCN-1 frames from hex or a raw capture",
        description="Decode SCN-1 frames. Prints one JSON object per frame on stdout; "
        "with --file, a summary of counters on stderr. A file, pipe or live tty is decoded "
        "as bytes arrive and ends at EOF (or when a tty's far side closes).",
        epilog=_examples(
            "decode 'A5 5A 1F 01 01 00 C0 FF EE ...'   (quote the frame)",
            "decode --file capture.bin --rssi-append",
            "decode --file /dev/ttyUSB0 --dialect at",
        ),
        formatter_class=_RawHelp,
    )
    p.add_argument("frames", nargs="*", metavar="HEX", help="one whole frame in hex (spaces ok)")
    p.add_argument("--file", metavar="PATH", help="raw capture to frame; - for stdin")
    p.add_argument("--dialect", choices=("transparent", "at"), default="transparent")
    p.add_argument(
        "--rssi-append", action="store_true", help="the module appended an RSSI byte per packet"
    )
    p.add_argument(
        "--device",
        choices=DECODE_DEVICES,
        default="scn1",
        metavar="MODEL",
        help="what sent the HEX payloads: " + ", ".join(DECODE_DEVICES) + " (default scn1)",
    )
    p.add_argument(
        "--fport",
        type=int,
        metavar="N",
        help="LoRaWAN port of the payloads (default: the model's ordinary uplink port, "
        "85 for Milesight, 2 for dds75-lb; dds75-lb also 3, 5, 6)",
    )
    p.set_defaults(func=_decode, parser=p)

    p = sub.add_parser(
        "run",
        help="run the gateway daemon",
        epilog=_examples("run --config /etc/covergw/covergw.toml"),
        formatter_class=_RawHelp,
    )
    p.add_argument("--config", required=True, metavar="FILE", help="TOML configuration")
    p.set_defaults(func=_run, parser=p)

    p = sub.add_parser(
        "check-config",
        help="validate a configuration (and its registry) without starting",
        description="Exit 0: valid. 2: refused (the key and reason are printed). "
        "1: valid, but registry rows were left out.",
        epilog=_examples(
            "check-config --config /etc/covergw/covergw.toml",
            "check-config /etc/covergw/covergw.toml   (the older form, still accepted)",
        ),
        formatter_class=_RawHelp,
    )
    p.add_argument("config_file", nargs="?", metavar="FILE", help="same as --config FILE")
    p.add_argument("--config", metavar="FILE", help="TOML configuration")
    p.set_defaults(func=_check_config, parser=p)

    _add_diag(sub)

    p = sub.add_parser(
        "selftest",
        help="check config, state dir, ports, slaves, broker, TLS and clock in one go",
        description="One line per check, with the fix for each failure. Ports the running "
        "daemon holds are not taken from it. Exit 0: nothing failed (warnings allowed); 1: "
        "a check failed.",
        epilog=_examples("selftest", "selftest --config /etc/covergw/covergw.toml --json"),
        formatter_class=_RawHelp,
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE")
    p.add_argument("--json", action="store_true", help="one JSON object per check")
    p.set_defaults(func=_selftest, parser=p)

    p = sub.add_parser(
        "status",
        help="ask the running daemon how it is (local socket)",
        epilog=_examples("status", "status --json", "status --socket /run/covergw/control.sock"),
        formatter_class=_RawHelp,
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE",
                   help="only to find the socket; need not be valid")  # fmt: skip
    p.add_argument("--socket", metavar="PATH", help="the control socket (default: from the config)")
    p.add_argument("--json", action="store_true", help="the raw reply, for machines")
    p.set_defaults(func=_status, parser=p)

    p = sub.add_parser(
        "demo",
        help="run the gateway against the simulator with a local broker, as an operator sees it",
        epilog=_examples("demo", "demo --scenario flood --speed 4", "demo --broker 127.0.0.1:1883"),
        formatter_class=_RawHelp,
    )
    p.add_argument("--scenario", default="city_block", help="shipped name or file")
    p.add_argument("--duration", type=_positive, help="seconds (default: the scenario's length)")
    p.add_argument("--speed", type=_positive, default=2.0, help="scenario time scale (default 2)")
    p.add_argument("--broker", metavar="HOST:PORT", help="use this broker instead of a local one")
    p.set_defaults(func=_demo, parser=p)
    return parser


EXIT_PIPE = 141  # what a shell reports for a tool ended by SIGPIPE (``| head``)


def main(argv: Sequence[str] | None = None) -> int:
    # The parser is not kept: for ``run`` it would live as long as the daemon.
    args = build_parser().parse_args(argv)
    default_level = {"run": "INFO", "demo": "ERROR"}.get(args.command, "WARNING")
    logging.basicConfig(
        level=(args.log_level or default_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        code: int = args.func(args)
    except BrokenPipeError:
        # The reader went away (``covergw decode … | head``): stop quietly, and keep
        # Python from complaining again when it flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_PIPE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except GatewayError as err:
        print(f"covergw {args.command}: {err}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
