"""``covergw diag tail`` on the daemon's side: what is noted for it, its filters, its JSON form.

``Watch`` is the daemon's one hook for people watching: every frame, input
and committed batch passes through it; it keeps the ``NodeBoard`` that
``covergw status`` reads and, only while somebody tails, formats Modbus
readings, alarm decisions and the queue's failing writes onto the tap.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.buffer.queue import Lane, Outgoing
from gateway.events import FrameHeard, Input, SlaveFailed, SlaveRead
from gateway.observation import Observation
from gateway.protocol.framing import Item, Received
from gateway.protocol.render import item_to_dict
from gateway.registry import Registry
from gateway.tap import Heard, Noted, Seen, Tap
from gateway.tools.board import NodeBoard


class Watch:
    def __init__(self, tap: Tap, board: NodeBoard, clock: Callable[[], float]) -> None:
        self.tap = tap
        self.board = board
        self.clock = clock

    def frame(self, source: str, at: float, item: Item) -> None:
        if isinstance(item, Received):
            self.board.frame(source, at, item)

    def input(self, event: Input) -> None:
        """The last word per device, and Modbus readings for tails."""
        if isinstance(event, FrameHeard):
            return  # every radio frame: its board entry came with ``frame``
        if type(event) is SlaveRead and not self.tap.watched:  # each poll: just the board
            self.board.slave(event.bus, event.address, event.at, None)
            return
        if isinstance(event, SlaveRead | SlaveFailed):
            failing = event.reason if isinstance(event, SlaveFailed) else None
            self.board.slave(event.bus, event.address, event.at, failing)
            if self.tap.watched:
                if isinstance(event, SlaveRead):
                    text = ", ".join(f"{k}={v:g}" for k, v in event.values.items())
                else:
                    text = f"FAILED x{event.consecutive}: {event.reason}"
                node = f"{event.bus}:{event.address}"
                self.tap.publish(
                    Noted(
                        "modbus", event.at, event.bus, f"slave {event.address}: {text}", node=node
                    )
                )
        elif isinstance(event, Observation):
            self.board.observation(event)

    def storage(self, text: str) -> None:
        """The queue's writes failing, or written again: a technician tailing sees it."""
        if self.tap.watched:
            self.tap.publish(Noted("queue", self.clock(), "queue", text))

    def committed(self, messages: Iterable[Outgoing]) -> None:
        """Alarm decisions, as committed to the queue."""
        if not self.tap.watched:
            return
        for message in messages:
            if message.lane is Lane.ALARM:
                with contextlib.suppress(ValueError, KeyError, TypeError, AttributeError):
                    self.tap.publish(self._alarm(json.loads(message.payload)))

    def _alarm(self, a: dict[str, Any]) -> Noted:
        cover = (a.get("cover") or {}).get("cover_id")
        source = a.get("source") or {}
        node = source.get("node") or (
            f"{source['bus']}:{source['slave']}" if "bus" in source else None
        )
        sub = f" {a['sub']}" if a.get("sub") else ""
        value = "" if a.get("value") is None else f" value={a['value']:g}{a.get('unit') or ''}"
        where = source.get("port") or source.get("bus") or "-"
        text = f"{a['kind']}{sub} {a['state'].upper()} {cover or node or '?'}{value}"
        return Noted("alarm", self.clock(), where, text, node=node, cover=cover)


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
