"""``covergw``: one entry point, one sub-command per job; the work lives elsewhere."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gateway import __version__

if TYPE_CHECKING:
    from gateway.config import GatewayConfig

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
    return decode.run(args.frames, args.file, dialect=args.dialect, rssi_append=args.rssi_append)


def _check_config(args: argparse.Namespace) -> int:
    from gateway.config import load_config  # noqa: PLC0415
    from gateway.errors import ConfigError  # noqa: PLC0415
    from gateway.registry import load_registry  # noqa: PLC0415

    try:
        config = load_config(Path(args.config))
    except ConfigError as err:
        print(f"config refused: {err}", file=sys.stderr)
        return 2
    print(
        f"{args.config}: ok (gateway {config.gateway_id}, digest {config.digest}; "
        f"{len(config.radios)} radio, {len(config.udp)} udp, {len(config.modbus)} modbus"
        f"{_device_inputs(config)})"
    )
    if config.registry is not None:
        registry, errors = load_registry(config.registry)
        print(f"{config.registry}: {len(registry.covers)} covers")
        for error in errors:
            print(f"{config.registry}: {error}: row left out", file=sys.stderr)
        if errors:
            return 1
    return 0


def _device_inputs(config: GatewayConfig) -> str:
    """The commercial-sensor inputs, when there are any (``, 1 lorawan, 1 tcp``)."""
    return "".join(
        f", {len(items)} {kind}"
        for kind, items in (("lorawan", config.lorawan), ("tcp", config.tcp))
        if items
    )


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

    p = diag.add_parser(
        "lorawan",
        help="live decoded uplinks from the network server's broker (ChirpStack v4)",
        description="Subscribes (read-only) to ChirpStack's MQTT integration and prints each "
        "event: uplinks decoded by the gateway's device models, joins, status, downlink "
        "outcomes, log events. Ctrl-C stops.",
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
