"""``covergw``: one entry point, one sub-command per job; the work lives elsewhere."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gateway import __version__


def _decode(args: argparse.Namespace) -> int:
    from gateway.tools import decode  # noqa: PLC0415 - keep start-up of other commands light

    if not args.frames and args.file is None:
        args.parser.error("give HEX frames or --file PATH")
    if args.frames and args.file is not None:
        args.parser.error("give HEX frames or --file, not both")
    return decode.run(args.frames, args.file, dialect=args.dialect, rssi_append=args.rssi_append)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="covergw", description="Smart manhole cover gateway")
    parser.add_argument("--version", action="version", version=f"covergw {__version__}")
    parser.add_argument(
        "--log-level", default="WARNING", help="DEBUG, INFO, WARNING (default), ERROR"
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
