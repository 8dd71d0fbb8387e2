"""Per-node sequence numbers: duplicates within the window, lost frames from gaps."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

DUPLICATE_WINDOW_S = 600.0  # spec: same (NODE, SEQ) within 10 minutes
_HALF = 0x8000


@dataclass(frozen=True, slots=True)
class Verdict:
    duplicate: bool
    lost: int  # frames missing between the last one and this one


@dataclass
class _Node:
    last_seq: int | None = None
    recent: OrderedDict[int, float] = field(default_factory=OrderedDict)


class SeqTracker:
    def __init__(self, *, window_s: float = DUPLICATE_WINDOW_S, max_recent: int = 256) -> None:
        self.window_s = window_s
        self.max_recent = max_recent
        self._nodes: dict[int, _Node] = {}

    def observe(self, node_id: int, seq: int, at: float, *, boot: bool = False) -> Verdict:
        node = self._nodes.setdefault(node_id, _Node())
        while node.recent and (
            len(node.recent) > self.max_recent
            or at - next(iter(node.recent.values())) > self.window_s
        ):
            node.recent.popitem(last=False)
        if boot:
            node.recent.clear()  # a rebooted node starts SEQ again; old numbers are not duplicates
        elif seq in node.recent:
            return Verdict(duplicate=True, lost=0)
        lost = 0
        if node.last_seq is not None and not boot:
            gap = (seq - node.last_seq - 1) & 0xFFFF
            if gap < _HALF:  # forward jump (a far "backward" one is a late or reordered frame)
                lost = gap
        if boot or node.last_seq is None or ((seq - node.last_seq) & 0xFFFF) < _HALF:
            node.last_seq = seq
        node.recent[seq] = at
        return Verdict(duplicate=False, lost=lost)
