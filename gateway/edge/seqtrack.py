"""Per-device counters: true retransmissions, anomalies, and lost frames from gaps.

A duplicate is a true retransmission only: the same counter with the same
content (a fingerprint: the bytes without the retransmission bit and CRC, or
the transport's message id). The same counter with other content is a
*sequence anomaly*: a forgery or a confused node. It is processed as a frame
and counted, and its fingerprint is remembered beside the first one, so a
forged frame can never make the real one with that number be discarded.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

DUPLICATE_WINDOW_S = 600.0  # spec: same (NODE, SEQ) within 10 minutes
MAX_RECENT = 16  # remembered (counter, fingerprint) pairs per device


def digest(content: bytes) -> int:
    """A short, stable digest (persisted, so not Python's salted ``hash``)."""
    return int.from_bytes(hashlib.blake2b(content, digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class Verdict:
    duplicate: bool
    lost: int  # frames missing between the last one and this one
    anomaly: bool = False  # a used counter with other content


@dataclass(slots=True)
class CounterState:
    """One device's counters; persisted as a row so duplicates are known across restarts."""

    last: int | None = None
    # (counter or -1, fingerprint digest) → when heard, oldest first (a dict keeps order)
    recent: dict[tuple[int, int], float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"last": self.last, "recent": [[c, f, t] for (c, f), t in self.recent.items()]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CounterState:
        state = cls(last=None if data.get("last") is None else int(data["last"]))
        for counter, fp, at in data.get("recent", [])[-MAX_RECENT:]:
            state.recent[(int(counter), int(fp))] = float(at)
        return state

    def seen(self, counter: int | None, fingerprint: int, *, by_message_id: bool = False) -> bool:
        """Would this reception be a duplicate? (Nothing is recorded.)"""
        if by_message_id:
            return any(fp == fingerprint for _, fp in self.recent)
        return counter is not None and (counter, fingerprint) in self.recent

    def observe(
        self,
        counter: int | None,
        fingerprint: int,
        at: float,
        *,
        restart: bool = False,
        by_message_id: bool = False,
        modulus: int = 1 << 16,
        window_s: float = DUPLICATE_WINDOW_S,
    ) -> Verdict:
        while self.recent and (
            len(self.recent) >= MAX_RECENT or at - next(iter(self.recent.values())) > window_s
        ):
            del self.recent[next(iter(self.recent))]
        if restart:
            self.recent.clear()  # a rebooted node counts again; old numbers are not duplicates
        key = (-1 if counter is None else counter, fingerprint)
        if by_message_id:
            if any(fp == fingerprint for _, fp in self.recent):
                return Verdict(duplicate=True, lost=0)
        elif counter is not None and key in self.recent:
            return Verdict(duplicate=True, lost=0)
        anomaly = counter is not None and any(c == counter for c, _ in self.recent)
        lost = 0
        if counter is not None:
            half = modulus // 2
            if self.last is not None and not restart and not anomaly:
                gap = (counter - self.last - 1) % modulus
                if gap < half:  # forward jump (a far "backward" one is a late or reordered frame)
                    lost = gap
            if (
                restart
                or self.last is None
                or (not anomaly and (counter - self.last) % modulus < half)
            ):
                self.last = counter
        self.recent[key] = at
        return Verdict(duplicate=False, lost=lost, anomaly=anomaly)


class SeqTracker:
    """Counters of many devices at once (the unit under test; the engine keeps one per device)."""

    def __init__(self, *, window_s: float = DUPLICATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._nodes: dict[int, CounterState] = {}

    def observe(
        self, node_id: int, seq: int, at: float, *, boot: bool = False, content: bytes = b""
    ) -> Verdict:
        node = self._nodes.setdefault(node_id, CounterState())
        return node.observe(seq, digest(content), at, restart=boot, window_s=self.window_s)
