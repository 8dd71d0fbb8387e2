"""The durable store-and-forward queue: nothing bound upstream exists only in memory.

SQLite in WAL mode, ``synchronous=FULL`` (a commit survives a power cut),
one writer. Callers hand in batches, so one commit covers many readings.
Two lanes: alarms are always taken before any telemetry backlog; telemetry
leaves oldest first. The file is bounded: past ``max_bytes`` the oldest
telemetry is evicted first and alarms only when nothing else is left, and
every eviction is counted in the database so the count survives restarts and
reaches the platform.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from types import TracebackType
from typing import Self

from gateway.errors import GatewayError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 2
_CHUNK = 500  # ids per IN (...) when acknowledging

_MIGRATIONS: dict[int, str] = {
    1: """
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            msg_id TEXT NOT NULL UNIQUE,
            lane INTEGER NOT NULL,
            topic TEXT NOT NULL,
            payload BLOB NOT NULL,
            created REAL NOT NULL,
            size INTEGER NOT NULL
        );
        CREATE INDEX outbox_lane ON outbox (lane, seq);
        CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
    """,
    # Alarm states and tilt baselines, written in the same commit as the
    # alarm they produced, so the two can never disagree after a crash.
    2: """
        CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
}


class QueueError(GatewayError):
    """The queue's storage failed (disk full, unreadable file)."""


class Lane(IntEnum):
    """Lower goes first."""

    ALARM = 0
    TELEMETRY = 1


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message bound upstream. ``msg_id`` stays the same across retries and restarts."""

    msg_id: str
    lane: Lane
    topic: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class Queued:
    seq: int
    message: Outgoing
    created: float


@dataclass(frozen=True, slots=True)
class QueueStats:
    depth: dict[Lane, int]
    bytes: int
    oldest_age_s: float | None
    evicted: dict[Lane, int]


class DurableQueue:
    """A context manager around one SQLite file; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        # Running depth and size, so neither the bound check on every commit nor
        # stats() scans the table. Counted once at open; kept by each commit's
        # known changes; counted again if a commit fails.
        self._depth: dict[Lane, int] = dict.fromkeys(Lane, 0)
        self._bytes = 0

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise QueueError("queue is not open")
        return self._db

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as err:
            # A damaged file must not stop the gateway: keep it for forensics, start afresh.
            aside = self.path.with_suffix(f".corrupt-{int(self._clock())}")
            log.error("queue %s unreadable (%s); moved to %s", self.path, err, aside)  # noqa: TRY400 - the traceback adds nothing
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._db = self._connect()
        self._recount()

    def _recount(self) -> None:
        """The one full scan: at open, and after a commit that did not go through."""
        self._depth = dict.fromkeys(Lane, 0)
        self._bytes = 0
        for lane, count, size in self.db.execute(
            "SELECT lane, COUNT(*), COALESCE(SUM(size), 0) FROM outbox GROUP BY lane"
        ):
            self._depth[Lane(lane)] = count
            self._bytes += size

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            _integrity_check(db)
            self._migrate(db)
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        (version,) = db.execute("PRAGMA user_version").fetchone()
        if version > SCHEMA_VERSION:
            raise QueueError(
                f"queue schema {version} is newer than this gateway ({SCHEMA_VERSION})"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            db.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, _MIGRATIONS[target].split(";")):
                db.execute(statement)
            db.execute(f"PRAGMA user_version={target}")
            db.execute("COMMIT")

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    # --- writing ---

    def put_many(
        self, messages: Iterable[Outgoing], *, state: Mapping[str, str | None] | None = None
    ) -> int:
        """Accept messages and state in one commit; a known message id is not queued twice.

        ``state`` is per key, so a caller writes only what changed: a value
        replaces the key's row, ``None`` deletes it.
        """
        now = self._clock()
        rows = [(m.msg_id, int(m.lane), m.topic, m.payload, now, len(m.payload)) for m in messages]
        if not rows and not state:
            return 0
        change = _Change()
        try:
            with self._transaction():
                cursor = self.db.executemany(
                    "INSERT OR IGNORE INTO outbox (msg_id, lane, topic, payload, created, size)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
                accepted = max(0, cursor.rowcount)
                if accepted == len(rows):
                    for _, lane, _, _, _, size in rows:
                        change.add(Lane(lane), 1, size)
                else:  # some ids were already queued: which ones is not worth tracking
                    change.recount = True
                if state:
                    self.db.executemany(
                        "INSERT OR REPLACE INTO state (key, value) VALUES (?, ?)",
                        [(k, v) for k, v in state.items() if v is not None],
                    )
                    self.db.executemany(
                        "DELETE FROM state WHERE key = ?",
                        [(k,) for k, v in state.items() if v is None],
                    )
                self._evict_over_limit(change)
        except sqlite3.OperationalError as err:  # disk full, read-only, locked
            self._recount()
            raise QueueError(f"queue write failed: {err}") from err
        self._apply(change)
        return accepted

    def ack(self, seqs: Sequence[int]) -> None:
        """The broker has the messages: forget them."""
        if not seqs:
            return
        change = _Change()
        try:
            with self._transaction():
                for start in range(0, len(seqs), _CHUNK):
                    chunk = list(seqs[start : start + _CHUNK])
                    marks = ",".join("?" * len(chunk))
                    for lane, count, size in self.db.execute(
                        "SELECT lane, COUNT(*), SUM(size) FROM outbox"  # noqa: S608 - only placeholders
                        f" WHERE seq IN ({marks}) GROUP BY lane",
                        chunk,
                    ):
                        change.add(Lane(lane), -count, -size)
                    self.db.execute(f"DELETE FROM outbox WHERE seq IN ({marks})", chunk)  # noqa: S608
        except sqlite3.OperationalError:
            self._recount()
            raise
        self._apply(change)

    def _apply(self, change: _Change) -> None:
        if change.recount:
            self._recount()
            return
        for lane, count in change.depth.items():
            self._depth[lane] += count
        self._bytes += change.bytes

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)

    def _evict_over_limit(self, change: _Change) -> None:
        if change.recount:
            (total,) = self.db.execute("SELECT COALESCE(SUM(size), 0) FROM outbox").fetchone()
        else:
            total = self._bytes + change.bytes
        excess = total - self.max_bytes
        for lane in (Lane.TELEMETRY, Lane.ALARM):
            if excess <= 0:
                return
            victims = []
            freed = 0
            for seq, size in self.db.execute(
                "SELECT seq, size FROM outbox WHERE lane = ? ORDER BY seq", (int(lane),)
            ):
                if freed >= excess:
                    break
                victims.append((seq,))
                freed += size
            if victims:
                self.db.executemany("DELETE FROM outbox WHERE seq = ?", victims)
                self.db.execute(
                    "INSERT INTO counters (name, value) VALUES (?, ?)"
                    " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
                    (f"evicted_{lane.name.lower()}", len(victims)),
                )
                change.add(lane, -len(victims), -freed)
                log.warning("queue full: evicted %d %s messages", len(victims), lane.name.lower())
            excess -= freed

    # --- reading ---

    def get_state(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def state_items(self, prefix: str) -> Iterator[tuple[str, str]]:
        """Every state row whose key starts with ``prefix``, in key order."""
        upper = prefix + "\U0010ffff"
        for key, value in self.db.execute(
            "SELECT key, value FROM state WHERE key >= ? AND key < ? ORDER BY key",
            (prefix, upper),
        ):
            yield str(key), str(value)

    def peek(self, limit: int) -> list[Queued]:
        """The next messages to publish: all alarms first, then telemetry oldest first."""
        rows = self.db.execute(
            "SELECT seq, msg_id, lane, topic, payload, created FROM outbox"
            " ORDER BY lane, seq LIMIT ?",
            (limit,),
        ).fetchall()
        return [
            Queued(seq, Outgoing(msg_id, Lane(lane), topic, bytes(payload)), created)
            for seq, msg_id, lane, topic, payload, created in rows
        ]

    def peek_lane(self, lane: Lane, limit: int, *, after: int = 0) -> list[Queued]:
        """One lane's next messages with ``seq > after``, oldest first.

        The uplink drains each lane on its own path, so an alarm never waits
        behind a telemetry round (and ``after`` skips what it already has in flight).
        """
        rows = self.db.execute(
            "SELECT seq, msg_id, topic, payload, created FROM outbox"
            " WHERE lane = ? AND seq > ? ORDER BY seq LIMIT ?",
            (int(lane), after, limit),
        ).fetchall()
        return [
            Queued(seq, Outgoing(msg_id, lane, topic, bytes(payload)), created)
            for seq, msg_id, topic, payload, created in rows
        ]

    def stats(self) -> QueueStats:
        """Cheap enough to call every second: no table scan."""
        oldest = None
        for lane in Lane:
            row = self.db.execute(
                "SELECT created FROM outbox WHERE lane = ? ORDER BY seq LIMIT 1", (int(lane),)
            ).fetchone()
            if row is not None:
                oldest = row[0] if oldest is None else min(oldest, row[0])
        evicted = dict.fromkeys(Lane, 0)
        for name, value in self.db.execute("SELECT name, value FROM counters"):
            for lane in Lane:
                if name == f"evicted_{lane.name.lower()}":
                    evicted[lane] = value
        age = None if oldest is None else max(0.0, self._clock() - oldest)
        return QueueStats(dict(self._depth), self._bytes, age, evicted)


@dataclass
class _Change:
    """What one commit does to the queue's depth and size, applied once it has committed."""

    depth: dict[Lane, int] = field(default_factory=lambda: dict.fromkeys(Lane, 0))
    bytes: int = 0
    recount: bool = False

    def add(self, lane: Lane, count: int, size: int) -> None:
        self.depth[lane] += count
        self.bytes += size


def _integrity_check(db: sqlite3.Connection) -> None:
    (check,) = db.execute("PRAGMA quick_check").fetchone()
    if check != "ok":
        raise sqlite3.DatabaseError(f"quick_check: {check}")


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on any error."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
