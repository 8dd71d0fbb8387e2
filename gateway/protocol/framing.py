"""Find SCN-1 frames in what radio modules deliver.

``StreamFramer`` is for the transparent dialect (a raw byte stream);
``AtLineFramer`` for the AT-line dialect (one hex frame per text line). Both
take bytes as they come from the port, in any chunking, and return
``Received`` or ``Rejected`` items in wire order; neither ever raises on input.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field

from gateway.errors import (
    CrcError,
    HexError,
    LengthError,
    ProtocolError,
    RejectReason,
    TruncatedError,
)
from gateway.protocol import scn1
from gateway.protocol.codec import check_envelope, decode_body, decode_frame
from gateway.protocol.messages import Frame
from gateway.values import quick_init

log = logging.getLogger(__name__)
# Per-frame logging sits below DEBUG so a flood cannot drown the log.
FRAME_LOG_LEVEL = 5

IDLE_GAP_S = 0.5
"""A partial frame still incomplete after this much silence is truncated (spec)."""


@quick_init
@dataclass(frozen=True, slots=True)
class Received:
    """A frame found on the wire, with the link quality the dialect reported."""

    frame: Frame
    raw: bytes
    rssi_dbm: int | None = None
    snr_db: float | None = None


@quick_init
@dataclass(frozen=True, slots=True)
class Rejected:
    """A candidate that failed a check; ``raw`` is what was looked at."""

    error: ProtocolError
    raw: bytes


Item = Received | Rejected


@dataclass
class FramerStats:
    """Counters a technician and the platform read; only ever incremented."""

    frames: int = 0
    rejected: Counter[RejectReason] = field(default_factory=Counter)
    skipped_bytes: int = 0
    unknown_tlvs: int = 0
    ignored_lines: int = 0

    def as_dict(self) -> dict[str, int]:
        out = {
            "frames": self.frames,
            "skipped_bytes": self.skipped_bytes,
            "unknown_tlvs": self.unknown_tlvs,
            "ignored_lines": self.ignored_lines,
        }
        out.update({f"rejected_{r.value}": self.rejected[r] for r in RejectReason})
        return out

    def record(self, item: Item) -> None:
        if isinstance(item, Received):
            self.frames += 1
            self.unknown_tlvs += item.frame.unknown_count
            if log.isEnabledFor(FRAME_LOG_LEVEL):  # the arguments cost more than the check
                log.log(FRAME_LOG_LEVEL, "frame %s seq=%d", item.frame.node_hex, item.frame.seq)
        else:
            self.rejected[item.error.reason] += 1
            if log.isEnabledFor(FRAME_LOG_LEVEL):
                log.log(FRAME_LOG_LEVEL, "rejected %s raw=%s", item.error, item.raw.hex())


class StreamFramer:
    """Transparent dialect: SYNC, LEN and CRC find frames in a noisy byte stream.

    A failed candidate (bad LEN, bad CRC, truncated at an idle gap) drops only
    its first SYNC byte, so a real frame that starts inside it is still found.
    A candidate with a good CRC is a real frame even if its content is refused
    (version, type, TLVs): it is consumed whole.
    """

    def __init__(self, *, rssi_append: bool = False, max_buffer: int = 4096) -> None:
        self.rssi_append = rssi_append
        self.stats = FramerStats()
        self._buf = bytearray()
        self._max_buffer = max(max_buffer, 2 * scn1.MAX_FRAME)

    @property
    def pending(self) -> int:
        """Bytes held waiting for the rest of a candidate."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Item]:
        self._buf += data
        items = self._scan(at_idle=False)
        overflow = len(self._buf) - self._max_buffer
        if overflow > 0:  # cannot happen while candidates are bounded; kept as a fuse
            del self._buf[:overflow]
            self.stats.skipped_bytes += overflow
        return items

    def idle(self) -> list[Item]:
        """The line has been silent for ``IDLE_GAP_S``: resolve what is held."""
        return self._scan(at_idle=True)

    def _skip(self, count: int) -> None:
        del self._buf[:count]
        self.stats.skipped_bytes += count

    def _scan(self, *, at_idle: bool) -> list[Item]:
        items: list[Item] = []
        buf = self._buf
        while True:
            start = buf.find(scn1.SYNC)
            if start < 0:
                # Keep a trailing A5: it may be the first half of a SYNC.
                keep = 1 if buf[-1:] == scn1.SYNC[:1] and not at_idle else 0
                self._skip(len(buf) - keep)
                return items
            if start:
                self._skip(start)
            if len(buf) < 3:
                if at_idle:
                    self._reject(items, TruncatedError("SYNC at the end of a burst"), 1, 2)
                    continue
                return items
            length = buf[2]
            if not scn1.MIN_LEN <= length <= scn1.MAX_LEN:
                bad_len = LengthError(f"LEN {length} outside {scn1.MIN_LEN}..{scn1.MAX_LEN}")
                self._reject(items, bad_len, 1, 3)
                continue
            total = length + scn1.OVERHEAD
            needed = total + (1 if self.rssi_append else 0)
            if len(buf) < total:
                if at_idle:
                    cut = TruncatedError(f"LEN {length} needs {total} bytes, got {len(buf)}")
                    self._reject(items, cut, 1, len(buf))
                    continue
                return items
            if len(buf) < needed and not at_idle:
                return items  # frame whole, its RSSI byte still on the way
            raw = bytes(buf[:total])
            try:
                body = check_envelope(raw)
            except CrcError as err:
                self._reject(items, err, 1, total)
                continue
            rssi = buf[total] - 256 if self.rssi_append and len(buf) > total else None
            del buf[: min(needed, len(buf))]
            try:
                item: Item = Received(decode_body(body), raw, rssi)
            except ProtocolError as err:
                item = Rejected(err, raw)
            self.stats.record(item)
            items.append(item)

    def _reject(self, items: list[Item], err: ProtocolError, drop: int, seen: int) -> None:
        item = Rejected(err, bytes(self._buf[:seen]))
        self.stats.record(item)
        items.append(item)
        self._skip(drop)


_AT_RX = re.compile(rb"^\+EVT:RXP2P:(-?\d+):(-?\d+(?:\.\d+)?):([0-9A-Fa-f]*)$")
_AT_RSSI_SNR = b"+EVT:RXP2P:RECV_RSSI_SNR"


class AtLineFramer:
    """AT-line dialect (RAK3172 P2P): ``+EVT:RXP2P:<rssi>:<snr>:<hex>`` CR LF.

    Lines that are not receptions (``OK``, other events, noise) are counted in
    ``stats.ignored_lines`` and otherwise ignored. An over-long line is
    discarded whole rather than allowed to grow the buffer.
    """

    MAX_LINE = 2 * scn1.MAX_FRAME + 64

    def __init__(self) -> None:
        self.stats = FramerStats()
        self._buf = bytearray()
        self._discarding = False

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Item]:
        items: list[Item] = []
        self._buf += data
        while (end := self._buf.find(b"\n")) >= 0:
            line = bytes(self._buf[:end]).rstrip(b"\r")
            del self._buf[: end + 1]
            if self._discarding:
                self._discarding = False
                self.stats.ignored_lines += 1
                continue
            item = self.parse_line(line)
            if item is not None:
                items.append(item)
        if len(self._buf) > self.MAX_LINE:
            self.stats.skipped_bytes += len(self._buf)
            self._buf.clear()
            self._discarding = True
        return items

    def idle(self) -> list[Item]:
        """A line with no end after an idle gap is noise."""
        if self._buf:
            self.stats.skipped_bytes += len(self._buf)
            self.stats.ignored_lines += 1
            self._buf.clear()
        self._discarding = False
        return []

    def parse_line(self, line: bytes) -> Item | None:
        line = line.strip()
        match = _AT_RX.match(line)
        if match is None:
            if line:
                self.stats.ignored_lines += 1
                level = logging.DEBUG if line.startswith(_AT_RSSI_SNR) else FRAME_LOG_LEVEL
                log.log(level, "ignored line %r", line[:80])
            return None
        rssi, snr, payload = match.groups()
        try:
            if len(payload) % 2:
                raise HexError(f"odd number of hex digits ({len(payload)})")
            raw = bytes.fromhex(payload.decode("ascii"))
            item: Item = Received(decode_frame(raw), raw, int(rssi), float(snr))
        except ProtocolError as err:
            item = Rejected(err, line)
        self.stats.record(item)
        return item


Framer = StreamFramer | AtLineFramer


def make_framer(dialect: str, *, rssi_append: bool = False) -> Framer:
    if dialect == "transparent":
        return StreamFramer(rssi_append=rssi_append)
    if dialect == "at":
        return AtLineFramer()
    raise ValueError(f"unknown radio dialect {dialect!r} (transparent, at)")
