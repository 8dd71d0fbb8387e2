"""``covergw status``: ask the running daemon, print what a technician needs to see."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from gateway.control import follow, request
from gateway.edge.alarm import SEVERITY, AlarmKind

_KINDS = {k.value for k in AlarmKind}


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip(), file=out
        )


def status_line(stats: dict[str, Any]) -> str:
    """One line for systemd's STATUS (``systemctl status covergw``), from a stats snapshot."""
    q = stats["queue"]
    depth = q["depth_alarm"] + q["depth_telemetry"]
    oldest = f" oldest {q['oldest_age_s']:.0f}s" if q["oldest_age_s"] else ""
    down = [name for name, port in stats["ports"].items() if port["state"] == "down"]
    ports = f"; ports down: {', '.join(down)}" if down else ""
    storage = "; storage degraded" if q.get("storage") == "degraded" else ""
    return (
        f"uplink {stats['uplink']['state']}; queue {depth}{oldest}; "
        f"{stats['edge']['active_alarms']} active alarms{ports}{storage}"
    )


def _battery(row: dict[str, Any]) -> str:
    if row.get("battery_pct") is not None:
        return f"{row['battery_pct']:.0f}%"
    if row.get("battery_mv"):
        return f"{row['battery_mv'] / 1000:.2f} V"
    return "-"


_RANK = {"critical": 0, "major": 1, "minor": 2}


def _gravity(alarms: list[str]) -> int:
    """0 for a cover with a critical alarm … 3 for none ("cover_open", "sensor_fault rs485:2")."""
    ranks = [_RANK[SEVERITY[AlarmKind(a.split()[0])]] for a in alarms if a.split()[0] in _KINDS]
    return min(ranks, default=2 if alarms else 3)


def _covers(reply: dict[str, Any], out: TextIO, limit: int = 50) -> None:
    rows = reply.get("covers") or []
    print(f"\ncovers: {sum(r['registered'] for r in rows)} registered", file=out)
    if not rows:
        return
    # Covers with an alarm first, the gravest first, then silent ones: what the technician
    # came for.
    ordered = sorted(
        rows, key=lambda r: (_gravity(r["active_alarms"]), r["last_heard"] is not None)
    )
    table = [["COVER", "DEVICES", "LAST HEARD", "BATTERY", "LINK", "ALARMS", "MAINTENANCE"]]
    for row in ordered[:limit]:
        devices = " ".join(
            d["device"].split(":", 1)[1] + ("!" if d.get("failing") else "") for d in row["devices"]
        )
        age = min((d["age_s"] for d in row["devices"] if d["age_s"] is not None), default=None)
        maintenance = row["maintenance_until"] or ("yes" if row["maintenance"] else "-")
        table.append(
            [
                row["cover_id"] or "(unregistered)",
                devices or "-",
                f"{_age(age)} ago" if age is not None else "never",
                _battery(row),
                row["link"] or "-",
                ", ".join(row["active_alarms"]) or "-",
                maintenance,
            ]
        )
    _table(table, out)
    if len(rows) > limit:
        print(f"... and {len(rows) - limit} more (--json for all)", file=out)


def render(reply: dict[str, Any], out: TextIO) -> None:
    stats = reply["stats"]
    up, q = stats["uplink"], stats["queue"]
    uptime = _age(stats["uptime_s"])
    for problem in reply.get("attention") or []:
        print(f"!! {problem}", file=out)
    print(f"covergw {stats['gateway']}  up {uptime}  config {reply['config_digest']}", file=out)
    print(
        f"uplink   {up['state']}  (connects {up['connects']}, reconnects {up['reconnects']}, "
        f"published {up['published_messages']} messages)",
        file=out,
    )
    print(
        f"queue    {q['depth_alarm']} alarms + {q['depth_telemetry']} readings, "
        f"oldest {_age(q['oldest_age_s'])}, {q['bytes'] // 1024} KiB; "
        f"evicted {q['evicted_alarm']} alarms / {q['evicted_telemetry']} readings",
        file=out,
    )
    if q.get("storage") == "degraded":
        print(f"storage  degraded: {q.get('storage_reason')}", file=out)
    edge = stats["edge"]
    print(
        f"edge     duplicates {edge['duplicates']}, lost by seq gap {edge['lost_frames']}, "
        f"unregistered frames {edge['unregistered_frames']}, shed {edge['shed_telemetry']}\n",
        file=out,
    )
    rows = [["PORT", "KIND", "STATE", "FRAMES", "REJECTED", "SKIPPED", "NOTES"]]
    for name, port in stats["ports"].items():
        rejected = sum(v for k, v in port.items() if k.startswith("rejected_"))
        notes = port.get("last_error") or ""
        if port["kind"] == "modbus" and port["state"] == "open":
            notes = ", ".join(
                f"0x{int(a):02X} "
                + (
                    "ok"
                    if not s["consecutive_failures"]
                    else f"FAILING x{s['consecutive_failures']}"
                )
                for a, s in port["slaves"].items()
            )
        rows.append(
            [
                name,
                port["kind"],
                port["state"],
                str(port.get("frames", "-")),
                str(rejected) if port["kind"] != "modbus" else "-",
                str(port.get("skipped_bytes", "-")),
                notes,
            ]
        )
    _table(rows, out)
    alarms = reply["active_alarms"]
    print(f"\nactive alarms: {len(alarms)}", file=out)
    if alarms:
        _table(
            [["SUBJECT", "KIND", "SINCE"]]
            + [
                [
                    a["subject"],
                    a["kind"] + (f" {a['sub']}" if a["sub"] else ""),
                    a["raised_at"] or "-",
                ]
                for a in alarms
            ],
            out,
        )
    _covers(reply, out)


def run(socket_path: Path, *, as_json: bool) -> int:
    try:
        reply = asyncio.run(request(socket_path, "status"))
    except (OSError, TimeoutError, ValueError) as err:
        print(f"covergw is not answering on {socket_path}: {err}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(reply, ensure_ascii=False, indent=2))
    else:
        render(reply, sys.stdout)
    return 0


def tail(
    socket_path: Path,
    *,
    node: str | None,
    raw: bool,
    cover: str | None = None,
    bus: str | None = None,
    as_json: bool = False,
) -> int:
    """Print radio frames, Modbus readings, alarm decisions and queue write failures, live."""
    request = {"cmd": "tail", "node": node, "raw": raw, "cover": cover, "bus": bus,
               "json": as_json}  # fmt: skip

    async def follow_all() -> None:
        async for line in follow(socket_path, request):
            print(line, flush=True)

    try:
        asyncio.run(follow_all())
    except KeyboardInterrupt:
        return 0
    except (OSError, TimeoutError) as err:
        print(f"covergw is not answering on {socket_path}: {err}", file=sys.stderr)
        return 1
    print("the daemon closed the connection", file=sys.stderr)
    return 1
