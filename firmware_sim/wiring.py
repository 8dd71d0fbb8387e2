"""Point a gateway at a running simulation: its configuration and a matching census.

Shared by ``covergw demo`` and the end-to-end tests so both wire the gateway
to the simulator the same way.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from firmware_sim.runner import Endpoints
from firmware_sim.scenario import NETWORK_SERVER, Scenario

OWNERS = (
    "drainage",
    "water_supply",
    "gas",
    "heat",
    "power",
    "telecom",
    "traffic",
    "street_lighting",
)
ROADS = ("文三路", "学院路", "教工路", "天目山路", "Huanglong Rd", "Wensan Rd")


def gateway_config(
    tmp: Path,
    *,
    broker_port: int,
    endpoints: Endpoints,
    scenario: Scenario,
    registry_csv: str,
    udp_port: int | None = None,
    alarms: dict[str, Any] | None = None,
    uplink: dict[str, Any] | None = None,
    queue: dict[str, Any] | None = None,
    poll_interval_s: float = 0.25,
    gateway_id: str = "gw-test",
) -> dict[str, Any]:
    """A configuration (as parsed TOML) for the simulator's ports and a local broker."""
    registry = tmp / "covers.csv"
    registry.write_text(registry_csv, encoding="utf-8")
    models = {(b.name, s.address): s.model for b in scenario.buses for s in b.slaves}
    nb_links = {d.link for d in scenario.devices if d.link != NETWORK_SERVER}
    return {
        "gateway": {"id": gateway_id, "state_dir": str(tmp / "state"), "registry": str(registry)},
        "uplink": {
            "host": "127.0.0.1",
            "port": broker_port,
            "stats_interval_s": 1,
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 0.5,
            "publish_timeout_s": 3,
            **(uplink or {}),
        },
        "queue": {"flush_interval_s": 0.05, **(queue or {})},
        "radio": [
            {
                "name": name,
                "port": r["path"],
                "dialect": r["dialect"],
                "rssi_append": r["rssi_append"],
                "reopen_min_s": 0.1,
                "reopen_max_s": 0.5,
            }
            for name, r in endpoints.radios.items()
        ],
        "udp": [
            {
                "name": name,
                "bind": f"127.0.0.1:{udp_port}",
                # A link the scenario's NB-IoT devices use carries Milesight cellular frames.
                "format": "milesight-nb" if name in nb_links else "scn1",
            }
            for name in endpoints.udp
        ],
        "lorawan": _lorawan(endpoints),
        "modbus": [
            {
                "name": name,
                "port": b["path"],
                "timeout_s": 0.2,
                "retries": 0,
                "backoff_max_s": 1.0,
                "slaves": [
                    {"address": a, "profile": models[(name, a)], "poll_interval_s": poll_interval_s}
                    for a in b["slaves"]
                ],
            }
            for name, b in endpoints.buses.items()
        ],
        "alarms": alarms or {},
    }


def _lorawan(endpoints: Endpoints) -> list[dict[str, Any]]:
    """The simulated ChirpStack's broker as a ``[[lorawan]]`` input (none without one)."""
    if not endpoints.network_server:
        return []
    host, _, port = endpoints.network_server["broker"].rpartition(":")
    return [
        {
            "name": "chirpstack",
            "host": host,
            "port": int(port),
            "reconnect_min_s": 0.1,
            "reconnect_max_s": 1.0,
            "application_id": endpoints.network_server["application_id"],
        }
    ]


COLUMNS = (
    "cover_id",
    "name",
    "owner_unit",
    "cover_kind",
    "address",
    "latitude",
    "longitude",
    "node_id",
    "modbus",
    "sensor_depth_mm",
    "device",
    "device_id",
)


def census(scenario: Scenario, *, prefix: str = "HZ-XH") -> str:
    """A registry CSV for every simulated node and wired sensor, as a city would keep it.

    Each wired sensor gets its own cover (a level transmitter hangs 2.5 m deep).
    """
    out = io.StringIO()
    writer = csv.DictWriter(out, COLUMNS, restval="")
    writer.writeheader()
    n = 0
    for node in scenario.nodes:
        n += 1
        owner = OWNERS[n % len(OWNERS)]
        road = ROADS[n % len(ROADS)]
        writer.writerow(
            {
                "cover_id": f"{prefix}-{n:06d}",
                "name": f"{road} {owner} {n}",
                "owner_unit": owner,
                "cover_kind": owner,
                "address": f"{road} {n} 号",
                "latitude": f"{30.27 + n * 1e-4:.5f}",
                "longitude": f"{120.15 + n * 1e-4:.5f}",
                "node_id": f"{node.node_id:08X}",
            }
        )
    for bus in scenario.buses:
        for slave in bus.slaves:
            n += 1
            writer.writerow(
                {
                    "cover_id": f"{prefix}-{n:06d}",
                    "name": f"wired {slave.model}",
                    "owner_unit": "drainage",
                    "cover_kind": "sewage",
                    "address": f"泵站 {n}",
                    "modbus": f"{bus.name}:{slave.address}",
                    "sensor_depth_mm": "2500" if slave.model == "qdy30a_level" else "",
                }
            )
    for device in scenario.devices:
        n += 1
        road = ROADS[n % len(ROADS)]
        writer.writerow(
            {
                "cover_id": f"{prefix}-{n:06d}",
                "name": f"{road} {device.model} {n}",
                "owner_unit": "drainage",
                "cover_kind": "rainwater",
                "address": f"{road} {n} 号",
                "latitude": f"{30.27 + n * 1e-4:.5f}",
                "longitude": f"{120.15 + n * 1e-4:.5f}",
                "device": device.model,
                "device_id": device.device_id,
            }
        )
    return out.getvalue()
