"""Per-device counters: true retransmissions, anomalies, and lost frames from gaps.

A duplicate is a true retransmission only: the same counter with the same
content (a fingerprint: the bytes without the retransmission bit and CRC, or
the transport's message id). The same counter with other content is a
*sequence anomaly*: a forgery or a confused node. It is processed as a frame
and counted, and its fingerprint is remembered beside the first one, so a
forged frame can never make the real one with that number be discarded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway import digests

DUPLICATE_WINDOW_S = 600.0  # spec: same (NODE, SEQ) within 10 minutes
MAX_RECENT = 16  # remembered (counter, fingerprint) pairs per device


def digest(content: bytes) -> int:
    """A short, stable digest (persisted, so not Python's salted ``hash``)."""
    return int.from_bytes(digests.blake2b(content, digest_size=8).digest(), "big")


@dataclass(frozen=True, slots=True)
class Verdict:
    duplicate: bool
    lost: int  # frames missing between the last one and this one
    anomaly: bool = False  # a used counter with other content


# The verdicts nearly every reception gets, made once: a frozen dataclass's
# ``__init__`` is a slow generic call, and these are values, never changed.
_DUPLICATE = Verdict(duplicate=True, lost=0)
_IN_ORDER = Verdict(duplicate=False, lost=0)


@dataclass(slots=True)
class CounterState:
    """One device's counters; persisted as a row so duplicates are known across restarts."""

    last: int | None = None
    # (counter or -1, fingerprint digest, when heard) flat, oldest first: one tuple per
    # device (a dict of tuples cost ~300 bytes for the one entry most devices have).
    recent: tuple[int | float, ...] = ()

    def pairs(self) -> list[tuple[int, int, float]]:
        """The remembered receptions, oldest first."""
        r = self.recent
        return [(int(r[i]), int(r[i + 1]), float(r[i + 2])) for i in range(0, len(r), 3)]

    def recent_json(self) -> list[list[int | float]]:
        """``pairs`` as lists (a row per device per commit): made without a Python loop;
        ``observe`` and ``from_json`` keep each field's type (int, int, float)."""
        r = self.recent
        if len(r) == 3:  # one reception: a stranger heard once, nearly always
            return [[r[0], r[1], r[2]]]
        return list(map(list, zip(r[0::3], r[1::3], r[2::3], strict=True)))

    def to_json(self) -> dict[str, Any]:
        return {"last": self.last, "recent": self.recent_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CounterState:
        state = cls(last=None if data.get("last") is None else int(data["last"]))
        kept: dict[tuple[int, int], float] = {}
        for counter, fp, at in data.get("recent", [])[-MAX_RECENT:]:
            kept[(int(counter), int(fp))] = float(at)
        state.recent = tuple(v for (c, f), t in kept.items() for v in (c, f, t))
        return state

    def _has_fingerprint(self, fingerprint: int) -> bool:
        return fingerprint in self.recent[1::3]

    def _has(self, counter: int, fingerprint: int) -> bool:
        r = self.recent
        if fingerprint not in r[1::3]:  # nearly every reception: one scan in C, not a loop
            return False
        return any(r[i] == counter and r[i + 1] == fingerprint for i in range(0, len(r), 3))

    def seen(self, counter: int | None, fingerprint: int, *, by_message_id: bool = False) -> bool:
        """Would this reception be a duplicate? (Nothing is recorded.)"""
        if by_message_id:
            return self._has_fingerprint(fingerprint)
        return counter is not None and self._has(counter, fingerprint)

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
        r = self.recent
        if not r and counter is not None and not by_message_id and (restart or self.last is None):
            # A device heard for the first time since its last restart (a stranger, in a
            # flood of them): nothing to forget, nothing it could duplicate, nothing lost.
            self.last = counter
            self.recent = (counter, fingerprint, float(at))
            return _IN_ORDER
        drop = 0  # entries (of three) forgotten from the front: too many, or too old
        while drop * 3 < len(r) and (
            len(r) // 3 - drop >= MAX_RECENT or at - r[drop * 3 + 2] > window_s
        ):
            drop += 1
        if drop:
            self.recent = r = r[drop * 3 :]
        if restart:
            self.recent = r = ()  # a rebooted node counts again; old numbers are not duplicates
        key = -1 if counter is None else counter
        if by_message_id:
            if self._has_fingerprint(fingerprint):
                return _DUPLICATE
        elif counter is not None and self._has(key, fingerprint):
            return _DUPLICATE
        anomaly = counter is not None and counter in r[0::3]
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
        self.recent = (*r, key, fingerprint, float(at))
        if not lost and not anomaly:
            return _IN_ORDER
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
