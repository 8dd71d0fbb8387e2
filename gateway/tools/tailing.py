"""``covergw diag tail``'s filters and its JSON form, on the daemon's side."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.protocol.framing import Received
from gateway.protocol.render import item_to_dict
from gateway.registry import Registry
from gateway.tap import Heard, Noted, Seen


@dataclass(frozen=True, slots=True)
class TailFilter:
    """All given filters must match. A cover stands for its node and its wired sensors."""

    nodes: frozenset[str] | None = None  # "00C0FFEE" or "BUS:ADDRESS"
    bus: str | None = None  # a bus or radio input name
    cover: str | None = None

    @classmethod
    def from_request(cls, request: dict[str, Any], registry: Registry) -> TailFilter:
        node = str(request.get("node") or "").strip() or None
        cover = str(request.get("cover") or "").strip() or None
        bus = str(request.get("bus") or "").strip() or None
        nodes: set[str] | None = {node.upper() if ":" not in node else node} if node else None
        if cover is not None:
            found = registry.covers.get(cover)
            owned = set()
            if found is not None:
                if found.node_id is not None:
                    owned.add(f"{found.node_id:08X}")
                owned.update(f"{b}:{a}" for b, a in found.modbus)
            nodes = owned if nodes is None else nodes & owned
        return cls(None if nodes is None else frozenset(nodes), bus, cover)

    def matches(self, item: Seen) -> bool:
        if self.bus is not None and item.source != self.bus:
            return False
        if self.nodes is None:
            return True
        if isinstance(item, Noted) and self.cover is not None and item.cover == self.cover:
            return True
        return item.node_hex in self.nodes


def tail_record(item: Seen) -> dict[str, Any]:
    at = datetime.fromtimestamp(item.at, UTC).isoformat(timespec="milliseconds")
    if isinstance(item, Heard):
        kind = "frame" if isinstance(item.item, Received) else "rejected"
        return {"time": at, "what": kind, "source": item.source, **item_to_dict(item.item)}
    return {
        "time": at,
        "what": item.what,
        "source": item.source,
        "text": item.text,
        "node": item.node,
        "cover": item.cover,
    }
