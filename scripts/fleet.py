"""A fleet of gateways on a three-node NATS cluster, measured (minutes on 2 cores).

    .venv/bin/python scripts/fleet.py [--gateways 50] [--kill 2] [--json out.json]

Starts a NATS cluster with MQTT and JetStream on loopback, one daemon per
gateway with its own credentials, a platform consumer on another node; every
gateway raises and clears an alarm; a node is killed between the two. Prints
alarms delivered, failover times, RSS and CPU per gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path

from firmware_sim.fleet import run_fleet


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=50)
    parser.add_argument("--kill", type=int, default=2, choices=(0, 1, 2))
    parser.add_argument("--json", type=Path, help="write the figures here too")
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it")
    args = parser.parse_args()
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = asyncio.run(run_fleet(args.keep, gateways=args.gateways, kill=args.kill))
    else:
        with tempfile.TemporaryDirectory(prefix="covergw-fleet-") as tmp:
            result = asyncio.run(run_fleet(Path(tmp), gateways=args.gateways, kill=args.kill))
    summary = result.summary()
    for key, value in summary.items():
        print(f"{key:26} {value}")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    ok = not result.alarms_missing and not result.spoof_delivered
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
