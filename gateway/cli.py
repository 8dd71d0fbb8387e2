"""``covergw``: one entry point, one sub-command per job; the work lives elsewhere."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import __version__


def _decode(args: argparse.Namespace) -> int:
    from gateway.tools import decode  # noqa: PLC0415 - keep start-up of other commands light

    if not args.frames and args.file is None:
        args.parser.error("give HEX frames or --file PATH")
    if args.frames and args.file is not None:
        args.parser.error("give HEX frames or --file, not both")
    return decode.run(args.frames, args.file, dialect=args.dialect, rssi_append=args.rssi_append)


def _check_config(args: argparse.Namespace) -> int:
    from gateway.validation import check_config  # noqa: PLC0415

    return check_config(Path(args.config))


def _run(args: argparse.Namespace) -> int:
    from gateway.daemon_main import run_daemon  # noqa: PLC0415

    return run_daemon(Path(args.config))


def _control_path(args: argparse.Namespace) -> Path | None:
    from gateway.config import load_config  # noqa: PLC0415
    from gateway.errors import ConfigError  # noqa: PLC0415

    if args.socket:
        return Path(args.socket)
    try:
        return load_config(Path(args.config)).control_path
    except ConfigError as err:
        print(f"config refused: {err}", file=sys.stderr)
        return None


def _status(args: argparse.Namespace) -> int:
    from gateway.tools import status  # noqa: PLC0415

    path = _control_path(args)
    return 2 if path is None else status.run(path, as_json=args.json)


def _diag_tail(args: argparse.Namespace) -> int:
    from gateway.tools import status  # noqa: PLC0415

    path = _control_path(args)
    return 2 if path is None else status.tail(path, node=args.node, raw=args.raw)


def _diag_sniff(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415
    import contextlib  # noqa: PLC0415

    from gateway.tools import diag  # noqa: PLC0415

    with open(args.save, "ab") if args.save else contextlib.nullcontext() as save:
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
            )
        )


def _profile(args: argparse.Namespace) -> object:
    from gateway.config import load_config  # noqa: PLC0415
    from gateway.protocol.modbus_profiles import BUILTIN_PROFILES  # noqa: PLC0415

    profiles = dict(BUILTIN_PROFILES)
    if args.config:
        profiles.update(
            {
                s.profile.name: s.profile
                for b in load_config(Path(args.config)).modbus
                for s in b.slaves
            }
        )
    if args.profile not in profiles:
        args.parser.error(f"unknown profile {args.profile!r}; have {sorted(profiles)}")
    return profiles[args.profile]


def _diag_modbus(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    from gateway.protocol.modbus_profiles import DeviceProfile  # noqa: PLC0415
    from gateway.tools import diag  # noqa: PLC0415

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
        )
    )


def _demo(args: argparse.Namespace) -> int:
    from gateway.tools import demo  # noqa: PLC0415

    return demo.run(args.scenario, duration_s=args.duration, speed=args.speed, broker=args.broker)


def _add_diag(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    diag = sub.add_parser("diag", help="bus tools for a technician at the box").add_subparsers(
        dest="tool", required=True
    )
    p = diag.add_parser(
        "sniff",
        help="decode what a radio module delivers, live",
        description="One line per frame (time, node, seq, type, RSSI, values) and one per "
        "rejected candidate with its reason. Ctrl-C stops.",
    )
    p.add_argument("--port", required=True, metavar="DEV")
    p.add_argument("--baud", type=int, default=9600)
    p.add_argument("--dialect", choices=("transparent", "at"), default="transparent")
    p.add_argument("--rssi-append", action="store_true")
    p.add_argument("--raw", action="store_true", help="add each frame's bytes in hex")
    p.add_argument("--save", metavar="FILE", help="record the capture for covergw decode --file")
    p.add_argument("--count", type=int, help="stop after this many frames")
    p.add_argument("--duration", type=float, help="stop after this many seconds")
    p.set_defaults(func=_diag_sniff, parser=p)

    p = diag.add_parser("tail", help="what the running daemon's ports hear, live")
    p.add_argument("--node", metavar="HEX", help="only this node (8 hex digits)")
    p.add_argument("--raw", action="store_true", help="add each frame's bytes in hex")
    p.add_argument("--config", default="/etc/covergw/covergw.toml", metavar="FILE")
    p.add_argument("--socket", metavar="PATH", help="the control socket (default: from the config)")
    p.set_defaults(func=_diag_tail, parser=p)

    p = diag.add_parser("modbus", help="scan an RS-485 bus, or read one slave through a profile")
    p.add_argument("action", choices=("scan", "read"))
    p.add_argument("--port", required=True, metavar="DEV")
    p.add_argument("--baud", type=int, default=9600)
    p.add_argument("--slaves", default="1-247", help="scan: addresses, e.g. 1-247 or 1,80")
    p.add_argument("--slave", type=lambda v: int(v, 0), help="read: the address (0x50 works)")
    p.add_argument("--profile", help="read: wit_inclinometer, qdy30a_level, or one from --config")
    p.add_argument("--config", metavar="FILE", help="take user-defined profiles from this config")
    p.add_argument("--timeout", type=float, default=0.2, help="seconds per reply")
    p.set_defaults(func=_diag_modbus, parser=p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="covergw", description="Smart manhole cover gateway")
    parser.add_argument("--version", action="version", version=f"covergw {__version__}")
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING, ERROR (default INFO for run)"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "decode",
        help="decode SCN-1 frames from hex or a raw capture",
        description="Decode SCN-1 frames. Prints one JSON object per frame on stdout; "
        "with --file, a summary of counters on stderr.",
    )
    p.add_argument("frames", nargs="*", metavar="HEX", help="one whole frame in hex (spaces ok)")
    p.add_argument("--file", metavar="PATH", help="raw capture to frame; - for stdin")
    p.add_argument("--dialect", choices=("transparent", "at"), default="transparent")
    p.add_argument(
        "--rssi-append", action="store_true", help="the module appended an RSSI byte per packet"
    )
    p.set_defaults(func=_decode, parser=p)

    p = sub.add_parser("run", help="run the gateway daemon")
    p.add_argument("--config", required=True, metavar="FILE", help="TOML configuration")
    p.set_defaults(func=_run, parser=p)

    p = sub.add_parser(
        "check-config",
        help="validate a configuration (and its registry) without starting",
        description="Exit 0: valid. 2: refused (the key and reason are printed). "
        "1: valid, but registry rows were left out.",
    )
    p.add_argument("config", metavar="FILE")
    p.set_defaults(func=_check_config, parser=p)

    _add_diag(sub)

    p = sub.add_parser("status", help="ask the running daemon how it is (local socket)")
    p.add_argument("--config", default="/etc/covergw/covergw.toml", metavar="FILE")
    p.add_argument("--socket", metavar="PATH", help="the control socket (default: from the config)")
    p.add_argument("--json", action="store_true", help="the raw reply, for machines")
    p.set_defaults(func=_status, parser=p)

    p = sub.add_parser(
        "demo",
        help="run the gateway against the simulator with a local broker, as an operator sees it",
    )
    p.add_argument("--scenario", default="city_block", help="shipped name or file")
    p.add_argument("--duration", type=float, help="seconds (default: the scenario's length)")
    p.add_argument("--speed", type=float, default=2.0, help="scenario time scale (default 2)")
    p.add_argument("--broker", metavar="HOST:PORT", help="use this broker instead of a local one")
    p.set_defaults(func=_demo, parser=p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    default_level = {"run": "INFO", "demo": "ERROR"}.get(args.command, "WARNING")
    logging.basicConfig(
        level=(args.log_level or default_level).upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
