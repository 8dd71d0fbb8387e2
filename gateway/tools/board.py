"""What a technician reads at a glance: per cover, its devices, when heard, battery, link, alarms.

The daemon notes the last thing each device said (``NodeBoard``), bounded to
``MAX_DEVICES`` devices, least recently heard forgotten first; ``cover_rows``
joins that with the registry, the active alarms and maintenance into one row
per cover (registered covers first, then devices heard that no cover owns).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from gateway.observation import Observation
from gateway.protocol.framing import Received
from gateway.protocol.messages import Battery
from gateway.registry import Cover
from gateway.values import maker, quick_init

MAX_DEVICES = 4096  # devices remembered for status; beyond it the longest silent is forgotten
MAX_ROWS = 2000  # cover rows in one status reply


@quick_init
@dataclass(frozen=True, slots=True)
class Seen:
    """The last word from one device."""

    at: float
    source: str
    battery_mv: float | None = None
    battery_pct: float | None = None
    rssi_dbm: float | None = None
    snr_db: float | None = None
    csq: int | None = None
    failing: str | None = None  # a wired sensor's last failure, None once it answers


_make_seen = maker(Seen)  # one per radio frame: without ``type.__call__``


def _iso(at: float | None) -> str | None:
    if at is None:
        return None
    try:
        stamp = datetime.fromtimestamp(at, UTC)
    except (OverflowError, ValueError, OSError):
        return "indefinitely"  # "maintenance on" without an end
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


class NodeBoard:
    """Keys: ``scn1:00C0FFEE``-style device refs and ``modbus:BUS:ADDRESS`` for wired sensors."""

    def __init__(self, *, limit: int = MAX_DEVICES) -> None:
        self._seen: OrderedDict[str, Seen] = OrderedDict()
        self._limit = limit

    def _put(self, key: str, seen: Seen) -> None:
        previous = self._seen.pop(key, None)
        # A frame without a battery record keeps the last known level.
        if previous is not None and (
            (seen.battery_mv is None and previous.battery_mv is not None)
            or (seen.battery_pct is None and previous.battery_pct is not None)
        ):
            seen = replace(
                seen,
                battery_mv=seen.battery_mv if seen.battery_mv is not None else previous.battery_mv,
                battery_pct=(
                    seen.battery_pct if seen.battery_pct is not None else previous.battery_pct
                ),
            )
        self._seen[key] = seen
        while len(self._seen) > self._limit:
            self._seen.popitem(last=False)

    def frame(self, source: str, at: float, received: Received) -> None:
        """Every radio frame, console or not: one lookup and one value, nothing more."""
        frame = received.frame
        battery_mv: float | None = None
        for record in frame.records:
            if type(record) is Battery:  # a final class: ``is`` costs no call, isinstance does
                battery_mv = record.voltage_mv
                break
        key = f"scn1:{frame.node_id:08X}"
        seen = self._seen
        previous = seen.pop(key, None)
        battery_pct = None
        if previous is not None:  # a frame without a battery record keeps the last known level
            battery_pct = previous.battery_pct
            if battery_mv is None:
                battery_mv = previous.battery_mv
        seen[key] = _make_seen(
            at, source, battery_mv, battery_pct, received.rssi_dbm, received.snr_db
        )
        if len(seen) > self._limit:
            seen.popitem(last=False)

    def observation(self, obs: Observation) -> None:
        q, link = obs.quantities, obs.link
        self._put(
            str(obs.device),
            Seen(
                obs.at,
                obs.source,
                battery_mv=q.battery_mv,
                battery_pct=q.battery_pct,
                rssi_dbm=link.rssi_dbm,
                snr_db=link.snr_db,
                csq=link.csq,
            ),
        )

    def slave(self, bus: str, address: int, at: float, failing: str | None) -> None:
        """Every poll of a wired sensor (``_put`` for its key, in one step): a failing
        one keeps the time it last answered."""
        key = f"modbus:{bus}:{address}"
        seen = self._seen
        previous = seen.pop(key, None)
        if previous is None:
            seen[key] = _make_seen(at, bus, None, None, None, None, None, failing)
        else:  # a wired sensor reports no battery; what it had, it keeps (as in ``_put``)
            heard_at = at if failing is None else previous.at
            mv, pct = previous.battery_mv, previous.battery_pct
            seen[key] = _make_seen(heard_at, bus, mv, pct, None, None, None, failing)
        if len(seen) > self._limit:
            seen.popitem(last=False)

    def get(self, key: str) -> Seen | None:
        return self._seen.get(key)

    def devices(self) -> Iterable[str]:
        return self._seen.keys()


def device_keys(cover: Cover) -> list[str]:
    """Every device the registry binds to the cover: its node, wired slaves, LoRaWAN/NB-IoT ones."""
    keys = [f"scn1:{cover.node_id:08X}"] if cover.node_id is not None else []
    keys += [f"modbus:{bus}:{address}" for bus, address in cover.modbus]
    return keys + [str(device) for device in cover.devices]


def _link(seen: Seen) -> str | None:
    parts = []
    if seen.rssi_dbm is not None:
        parts.append(f"RSSI {seen.rssi_dbm:g} dBm")
    if seen.snr_db is not None:
        parts.append(f"SNR {seen.snr_db:g} dB")
    if seen.csq is not None:
        parts.append(f"CSQ {seen.csq}")
    return ", ".join(parts) or None


def _device(key: str, seen: Seen | None, now: float) -> dict[str, Any]:
    if seen is None:
        return {"device": key, "last_heard": None, "age_s": None}
    return {
        "device": key,
        "last_heard": _iso(seen.at),
        "age_s": round(now - seen.at, 1),
        "battery_mv": seen.battery_mv,
        "battery_pct": seen.battery_pct,
        "rssi_dbm": seen.rssi_dbm,
        "snr_db": seen.snr_db,
        "csq": seen.csq,
        "link": _link(seen),
        "failing": seen.failing,
    }


def cover_rows(
    covers: Iterable[Cover],
    board: NodeBoard,
    alarms: Iterable[Mapping[str, Any]],
    maintenance_until: Mapping[str, float],
    now: float,
) -> list[dict[str, Any]]:
    """One row per cover, then one per device heard that no cover owns; at most ``MAX_ROWS``."""
    by_subject: dict[str, list[str]] = {}
    for a in alarms:
        name = str(a["kind"]) + (f" {a['sub']}" if a.get("sub") else "")
        by_subject.setdefault(str(a["subject"]), []).append(name)
    rows = []
    owned: set[str] = set()
    for cover in covers:
        keys = device_keys(cover)
        owned.update(keys)
        devices = [_device(k, board.get(k), now) for k in keys]
        heard = [d for d in devices if d["last_heard"] is not None]
        last = max(heard, key=lambda d: str(d["last_heard"])) if heard else None
        until = maintenance_until.get(cover.cover_id, 0.0)
        rows.append(
            {
                "cover_id": cover.cover_id,
                "registered": True,
                "devices": devices,
                "last_heard": last["last_heard"] if last else None,
                "battery_mv": next((d["battery_mv"] for d in heard if d.get("battery_mv")), None),
                "battery_pct": next(
                    (d["battery_pct"] for d in heard if d.get("battery_pct") is not None), None
                ),
                "link": next((d["link"] for d in heard if d.get("link")), None),
                "active_alarms": by_subject.get(cover.cover_id, []),
                "maintenance": cover.maintenance or until > now,
                "maintenance_until": _iso(until) if until > now else None,
            }
        )
        if len(rows) >= MAX_ROWS:
            return rows
    for key in board.devices():
        if key in owned or len(rows) >= MAX_ROWS:
            continue
        device = _device(key, board.get(key), now)
        subject = f"node:{key.split(':', 1)[1]}" if key.startswith("scn1:") else key
        rows.append(
            {
                "cover_id": None,
                "registered": False,
                "devices": [device],
                "last_heard": device["last_heard"],
                "battery_mv": device.get("battery_mv"),
                "battery_pct": device.get("battery_pct"),
                "link": device.get("link"),
                "active_alarms": by_subject.get(subject, []),
                "maintenance": False,
                "maintenance_until": None,
            }
        )
    return rows


def attention(status: Mapping[str, Any]) -> list[str]:
    """What is wrong, worst first: shown above everything else in ``covergw status``."""
    out = []
    reload = status.get("last_reload")
    if reload and not reload.get("ok"):
        out.append(f"reload refused at {reload.get('at', '?')}: {reload.get('reason', '?')}")
    stats = status.get("stats", {})
    uplink = stats.get("uplink", {}).get("state")
    if uplink not in (None, "connected"):
        out.append(f"uplink {uplink}")
    for name, port in stats.get("ports", {}).items():
        if port.get("state") == "down":
            out.append(f"port {name} down: {port.get('last_error') or 'no reason given'}")
        for address, slave in (port.get("slaves") or {}).items():
            if slave.get("consecutive_failures"):
                out.append(
                    f"{name} slave {address} failing x{slave['consecutive_failures']}: "
                    f"{slave.get('last_error') or '?'}"
                )
    queue = stats.get("queue", {})
    if queue.get("write_errors"):
        out.append(f"storage degraded: {queue['write_errors']} queue write errors")
    if queue.get("evicted_alarm"):
        out.append(f"queue evicted {queue['evicted_alarm']} alarms")
    for error in status.get("registry_errors") or []:
        out.append(f"registry: {error}")
    return out
