"""The durable store-and-forward queue: nothing bound upstream exists only in memory.

SQLite in WAL mode, ``synchronous=FULL`` (a commit survives a power cut).
One connection, one lock: the daemon hands batches to the queue's own writer
thread (the ``*_async`` methods) and awaits the commit, so a slow disk never
stalls the event loop; the synchronous methods stay for tools and tests.

Two lanes: alarms are always taken before any telemetry backlog; telemetry
leaves oldest first. An alarm is a row; telemetry is stored in chunks, one
row per chunk of readings that fits one uplink batch (schema 4, ``_rows``),
so SQLite and zlib work is paid per chunk. Depths, evictions and every
counter are in readings.

The bound is on disk, not on payloads: ``max_bytes`` covers the database's
pages, the WAL (checkpointed at half ``reserve_bytes``, counted as two) and a
reserve file of ``reserve_bytes`` (default ``max_bytes / 32``, 16 KiB to
4 MiB) kept beside the database. Past the bound the oldest telemetry is
evicted first, alarms only when nothing else is left; every eviction is
counted in the database, so the count survives restarts.

A full disk is a state, not a crash. On ``SQLITE_FULL`` (or a write I/O
error) the queue deletes the reserve file, which gives SQLite the room to
checkpoint and to evict, shrinks its working bound below what the disk
could hold, evicts the oldest telemetry to it and retries. Until the reserve
can be written again the queue reports itself ``degraded``; it checks the
free space before every write (and when asked, once a second by the daemon)
and recovers by itself. The lowered bound evicts telemetry only: alarms
give way to the configured bound alone, never to a short disk. An ack
that cannot be written is held in memory (bounded, ``MAX_HELD_ACKS``), its
rows are not published again, and the delete is retried with every later
write. Nothing but ``QueueError`` leaves this module.

A file SQLite cannot read is renamed aside with a timestamp and whatever rows
can still be read are salvaged into the fresh queue and counted
(``salvaged_*``, ``lost_unreadable``). The integrity check runs only when the
last close was not a clean one, so a clean start does not scan the file.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Self, TypeVar

from gateway.errors import GatewayError
from gateway.wire import MAX_ROW_BYTES, WireError, pack_chunk, pack_row, unpack_row

log = logging.getLogger(__name__)
_T = TypeVar("_T")

SCHEMA_VERSION = 4
CHUNK = 500  # ids per IN (...) when acknowledging
MAX_HELD_ACKS = 200_000  # acks held in memory while the disk refuses them; then peek pauses
MIN_RESERVE = 16 * 1024
MAX_RESERVE = 4 * 1024 * 1024
WAL_ALLOWANCE = 2  # reserves' worth of WAL counted against the bound
EVICT_STEP_PAGES = 32  # free pages a commit past the bound leaves for the next ones (~1 ms)
SALVAGE_STEP = 256  # sequence numbers read per step when salvaging a damaged file

# SQLite primary result codes (extended codes keep them in the low byte).
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_NOTADB = 26

_DDL_V1 = """
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
"""
# Alarm states and tilt baselines, written in the same commit as the alarm
# they produced, so the two can never disagree after a crash.
_DDL_V2 = "CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
# 882 B on disk per 601 B reading in v2: a 32-character id twice (row and a
# randomly filled unique index), the topic text in every row, a (lane, seq)
# index over every row and a size column. v3 keeps a uuid hex id as 16 bytes,
# topics once, an index over alarms only, and persists the depth so an open
# does not count.
_DDL_V3 = """
    CREATE TABLE topics (id INTEGER PRIMARY KEY, topic TEXT NOT NULL UNIQUE);
    CREATE TABLE outbox_v3 (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        msg_id BLOB NOT NULL UNIQUE,
        lane INTEGER NOT NULL,
        topic INTEGER NOT NULL,
        payload BLOB NOT NULL,
        created REAL NOT NULL
    );
"""
_DDL_V3_AFTER = """
    DROP TABLE outbox;
    ALTER TABLE outbox_v3 RENAME TO outbox;
    CREATE INDEX outbox_alarms ON outbox (seq) WHERE lane = 0;
"""
# v4: a telemetry row holds a chunk of readings (``n`` of them), so SQLite's
# insert, index entry and delete and the zlib stream are paid per chunk, not
# per reading. A v3 row is a chunk of one: adding the column rewrites nothing.
_DDL_V4 = "ALTER TABLE outbox ADD COLUMN n INTEGER NOT NULL DEFAULT 1"


class QueueError(GatewayError):
    """The queue's storage failed (disk full, unreadable file)."""


class QueueFullError(QueueError):
    """The disk is full and no telemetry is left to evict: the batch was not written."""


class Lane(IntEnum):
    """Lower goes first."""

    ALARM = 0
    TELEMETRY = 1


# Outgoing and Queued are immutable named tuples, not frozen dataclasses: the
# engine makes one Outgoing per reading and every peek one of each per row, and
# a frozen dataclass's __init__ (a setattr per field) cost ~1.6 µs a row of the
# ~7 µs the queue spends per reading; a named tuple is built in ~0.3 µs.
class Outgoing(NamedTuple):
    """One message bound upstream. ``msg_id`` stays the same across retries and restarts."""

    msg_id: str
    lane: Lane
    topic: str
    payload: bytes


class Queued(NamedTuple):
    """A queued row with its place in the queue (acknowledge by ``seq``).

    A telemetry row holds ``n`` readings: its payload packs their rendered
    JSON joined by ``\\n`` (``unpack_row``, then split), and its ``msg_id`` is
    the first reading's. Alarms and chunks of one are one message, ``n`` = 1.
    """

    seq: int
    message: Outgoing
    created: float
    n: int = 1


class _Row(NamedTuple):
    """A row as it is inserted: ``n`` readings packed in one payload (alarms: 1)."""

    msg_id: str
    lane: Lane
    topic: str
    payload: bytes
    n: int


def _chunk_row(first: Outgoing, texts: list[bytes]) -> _Row:
    """Readings as one telemetry row: a packed reading alone stays as it was."""
    if len(texts) > 1:
        payload = pack_chunk(b"\n".join(texts))
    elif first.payload[:1] == b"{":
        payload = pack_row(texts[0])
    else:
        payload = first.payload
    return _Row(first.msg_id, Lane.TELEMETRY, first.topic, payload, len(texts))


@dataclass(frozen=True, slots=True)
class QueueStats:
    depth: dict[Lane, int]
    bytes: int  # database and WAL files as they are on disk
    oldest_age_s: float | None
    evicted: dict[Lane, int]
    degraded: str | None = None  # why the queue cannot keep its bound, or None
    held_acks: int = 0
    counters: dict[str, int] = field(default_factory=dict)  # salvaged_*, lost_unreadable …


_HEX = "0123456789abcdef"


def encode_id(msg_id: str) -> str | bytes:
    """A lowercase hex id (uuid, or the engine's 24 digits) is stored as bytes; else text."""
    if len(msg_id) in (24, 32) and not msg_id.strip(_HEX):
        return bytes.fromhex(msg_id)
    return msg_id


def decode_id(stored: object) -> str:
    return stored.hex() if isinstance(stored, bytes) else str(stored)


def _is_damage(err: sqlite3.Error) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB: the file, not the disk or the call, is at fault."""
    code = getattr(err, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in {_SQLITE_CORRUPT, _SQLITE_NOTADB}


def _is_disk_trouble(err: sqlite3.Error) -> bool:
    code = getattr(err, "sqlite_errorcode", None)
    if code is None:
        return "full" in str(err)
    return code & 0xFF in {_SQLITE_FULL, _SQLITE_IOERR}


class DurableQueue:
    """A context manager around one SQLite file; see the module docstring."""

    def __init__(
        self,
        path: Path,
        *,
        max_bytes: int = 64 * 1024 * 1024,
        reserve_bytes: int | None = None,
        clock: Callable[[], float] = time.time,
        check_at_open: bool = True,
        chunk_readings: int = 1,
        chunk_bytes: int = 64 * 1024,
    ) -> None:
        """``check_at_open=False``: after an unclean close the open leaves the
        integrity check to ``check``/``check_async`` (the daemon runs it beside
        the start, so a crash with a large backlog does not delay ``online``).

        ``chunk_readings`` and ``chunk_bytes``: the telemetry of one ``put_many``
        is stored as rows of at most that many readings and that much rendered
        JSON (joined by newlines), cut by the rule the uplink batches by
        (``chunks``). The daemon passes ``[uplink] telemetry_batch_max`` and
        ``telemetry_batch_bytes``, so a row always fits in one uplink batch and
        is acknowledged whole. 1 (tools, tests): one row per reading, as in v3.
        """
        self.path = path
        self.chunk_readings = max(1, chunk_readings)
        self.chunk_bytes = min(chunk_bytes, MAX_ROW_BYTES)  # more would unpack as damage
        self.max_bytes = max_bytes
        if reserve_bytes is None:
            reserve_bytes = min(MAX_RESERVE, max(MIN_RESERVE, max_bytes // 32))
        self.reserve_bytes = reserve_bytes
        self.reserve_path = Path(f"{path}-reserve")
        self._clock = clock
        self._db: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._writer: _Writer | None = None
        self._page_size = 4096
        self._topics: dict[str, int] = {}
        self._topic_names: dict[int, str] = {}
        # Kept in step with every commit (and persisted by it), so stats() is
        # a read of memory: it never waits for the writer.
        self._depth: dict[Lane, int] = dict.fromkeys(Lane, 0)
        self._counters: dict[str, int] = {}
        self._oldest: dict[Lane, float | None] = dict.fromkeys(Lane)
        self._held: dict[Lane, int] = dict.fromkeys(Lane, 0)
        self._bound = max_bytes  # the working bound; below max_bytes while the disk is short
        self._degraded: str | None = None
        self._check_at_open = check_at_open
        self._unchecked = False  # an unclean close's check not run yet: no clean mark at close

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

    @property
    def degraded(self) -> str | None:
        """Why storage is degraded (disk full, writes failing), or None when it is healthy."""
        return self._degraded

    # --- opening and closing ---

    def open(self) -> None:
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._open()
            except QueueError:
                self._close_db()
                raise
            except (sqlite3.Error, OSError) as err:
                self._close_db()
                raise QueueError(f"queue {self.path} cannot be opened: {err}") from err
            self._writer = _Writer()

    def _open(self) -> None:
        try:
            self._db = self._connect(check=None)
        except sqlite3.DatabaseError as err:
            if isinstance(err, sqlite3.OperationalError):  # locked, no room, no access
                raise
            self._replace_damaged(err)
        self._load()
        try:
            self._mark(clean=False)
        except sqlite3.Error as err:
            if not _is_disk_trouble(err):
                raise
            self._set_degraded(f"disk full at start: {err}")
        self._ensure_reserve()

    def _replace_damaged(self, err: sqlite3.Error) -> None:
        """A damaged file must not stop the gateway: keep it for forensics,
        start afresh, and carry over what can still be read."""
        self._close_db()
        aside = self.path.with_suffix(f".corrupt-{int(self._clock())}")
        while aside.exists():
            aside = aside.with_name(aside.name + "x")
        log.error("queue %s damaged (%s); moved to %s", self.path, err, aside)
        self.path.rename(aside)
        for suffix in ("-wal", "-shm"):
            side = Path(f"{self.path}{suffix}")
            if side.exists():
                side.rename(Path(f"{aside}{suffix}"))
        self._db = self._connect(check=False)
        self._counters, self._depth = {}, dict.fromkeys(Lane, 0)
        self._topics, self._topic_names = {}, {}
        self._held = dict.fromkeys(Lane, 0)
        self._salvage(aside)
        self._load()

    def _on_damage(self, err: sqlite3.Error) -> None:
        """Corruption found in use (a clean start does not scan): set aside, salvage, go on."""
        try:
            self._replace_damaged(err)
        except (sqlite3.Error, OSError) as again:
            self._set_degraded(f"queue file damaged and not replaced: {again}")
            raise QueueError(f"queue damaged: {err}; replacing it failed: {again}") from again

    def _connect(self, *, check: bool | None) -> sqlite3.Connection:
        """``check``: None runs the integrity check only after an unclean close."""
        new = not self.path.exists() or self.path.stat().st_size == 0
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            if new:
                db.execute(f"PRAGMA page_size={self._page_size}")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA temp_store=MEMORY")  # held acks never need the disk
            # Debian builds SQLite with SECURE_DELETE: every evicted page would be
            # zeroed through the WAL, so making room would itself need room.
            db.execute("PRAGMA secure_delete=FAST")
            (self._page_size,) = db.execute("PRAGMA page_size").fetchone()
            # Checkpoint at half the allowance, so the WAL (that plus one
            # batch) stays within reserve_bytes for batches up to half of it.
            wal_pages = max(1, self.reserve_bytes // (2 * self._page_size))
            db.execute(f"PRAGMA wal_autocheckpoint={wal_pages}")
            # Truncated only past its allowance: blocks the WAL gave back to a
            # full disk would be taken by others, and then not even a delete fits.
            db.execute(f"PRAGMA journal_size_limit={WAL_ALLOWANCE * self.reserve_bytes}")
            if check or (check is None and not _closed_cleanly(db)):
                if check is None and not self._check_at_open:
                    self._unchecked = True  # check() runs it, beside the writer
                else:
                    _integrity_check(db)
            self._migrate(db)
            db.execute(
                "CREATE TEMP TABLE IF NOT EXISTS held_acks"
                " (seq INTEGER PRIMARY KEY, lane INTEGER NOT NULL, n INTEGER NOT NULL)"
            )
        except BaseException:
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
            try:
                _MIGRATIONS[target](db)
                db.execute(f"PRAGMA user_version={target}")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            log.info("queue schema migrated to version %d", target)

    def _load(self) -> None:
        """Counts, counters and topics from their rows: an open never scans the outbox."""
        self._counters = {str(k): int(v) for k, v in self.db.execute("SELECT * FROM counters")}
        self._depth = {lane: self._counters.get(f"depth_{lane.name.lower()}", 0) for lane in Lane}
        self._topic_names = {int(i): str(t) for i, t in self.db.execute("SELECT * FROM topics")}
        self._topics = {t: i for i, t in self._topic_names.items()}
        self._held = dict.fromkeys(Lane, 0)
        self._refresh_oldest()

    def _mark(self, *, clean: bool) -> None:
        with _Transaction(self.db):
            self.db.execute(
                "INSERT OR REPLACE INTO counters (name, value) VALUES ('clean_close', ?)",
                (int(clean),),
            )

    def close(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown()
        with self._lock:
            if self._db is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._retry_held_acks()
                    # A check still owed stays owed: the next open runs it.
                    self._mark(clean=not self._unchecked)
                self._close_db()

    @property
    def unchecked(self) -> bool:
        """The last close was not clean and ``check`` has not run yet."""
        return self._unchecked

    def check(self) -> bool:
        """The integrity check an open after an unclean close left for later.

        ``PRAGMA quick_check`` on a connection of its own, without the lock, so
        the writer goes on meanwhile (1M queued readings, 164 MB: ~0.15 s in
        the page cache, seconds on an SD card). Damage is handled as damage
        found in use: the file is set aside and what is readable salvaged.
        True when the file is sound (or there was nothing to check).
        """
        if not self._unchecked:
            return True
        try:
            db = sqlite3.connect(self.path, isolation_level=None)
            try:
                (result,) = db.execute("PRAGMA quick_check").fetchone()
            finally:
                db.close()
        except sqlite3.Error as err:
            if not _is_damage(err):
                raise QueueError(f"queue check failed: {err}") from err
            result = str(err)
        with self._lock:
            if result == "ok":
                self._unchecked = False
                return True
            self._on_damage(sqlite3.DatabaseError(f"quick_check: {result}"))
            self._unchecked = False  # a fresh file, with what was salvaged
            return False

    async def check_async(self) -> bool:
        """``check`` on a thread of its own: neither the loop nor the writer waits for it."""
        return await asyncio.to_thread(self.check)

    def _close_db(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    # --- the writer thread ---

    async def _on_writer(self, fn: Callable[[], _T], *, urgent: bool = False) -> _T:
        """``fn`` on the writer thread; ``urgent`` (an alarm's job) goes before waiting others."""
        if self._writer is None:
            raise QueueError("queue is not open")
        return await self._writer.submit(fn, urgent=urgent)

    async def put_many_async(
        self, messages: Iterable[Outgoing], *, state: Mapping[str, str | None] | None = None
    ) -> int:
        """``put_many`` on the writer thread; returns once the batch is committed.

        A batch with an alarm in it is an urgent job: it does not wait behind
        the uplink's telemetry peeks and acks.
        """
        batch = list(messages)
        urgent = any(m.lane is Lane.ALARM for m in batch)
        return await self._on_writer(
            functools.partial(self.put_many, batch, state=state), urgent=urgent
        )

    async def ack_async(self, seqs: Sequence[int], *, urgent: bool = False) -> None:
        await self._on_writer(functools.partial(self.ack, list(seqs)), urgent=urgent)

    async def ack_ids_async(self, msg_ids: Sequence[str], *, urgent: bool = False) -> None:
        await self._on_writer(functools.partial(self.ack_ids, list(msg_ids)), urgent=urgent)

    async def peek_async(self, limit: int) -> list[Queued]:
        return await self._on_writer(functools.partial(self.peek, limit))

    async def peek_lane_async(self, lane: Lane, limit: int, *, after: int = 0) -> list[Queued]:
        """An alarm lane's peek is urgent (see ``put_many_async``)."""
        return await self._on_writer(
            functools.partial(self.peek_lane, lane, limit, after=after),
            urgent=lane is Lane.ALARM,
        )

    async def recover_async(self) -> None:
        await self._on_writer(self.recover)

    # --- writing ---

    def put_many(
        self, messages: Iterable[Outgoing], *, state: Mapping[str, str | None] | None = None
    ) -> int:
        """Accept messages and state in one commit; a known message id is not queued twice.

        Telemetry goes in chunks (``chunk_readings``): a chunk is known by its
        first reading's id, and the same batch tried again cuts the same chunks.
        Returns the alarms and readings accepted.

        ``state`` is per key, so a caller writes only what changed: a value
        replaces the key's row, ``None`` deletes it. On a full disk the oldest
        telemetry makes room; ``QueueFullError`` means even that was not
        enough, and nothing of the batch was written.
        """
        batch = self._rows(messages)
        if not batch and not state:
            return 0
        with self._lock:
            self._maintain()
            try:
                return self._put(batch, state)
            except sqlite3.Error as err:
                if _is_damage(err):
                    self._on_damage(err)
                    try:
                        return self._put(batch, state)
                    except sqlite3.Error as again:
                        raise QueueError(f"queue write failed: {again}") from again
                if not _is_disk_trouble(err):
                    self._set_degraded(f"queue write failed: {err}")
                    raise QueueError(f"queue write failed: {err}") from err
                # Text only: an exception kept in a local is a cycle through its
                # traceback, and the cursors in it keep the connection from closing.
                first = str(err)
            log.warning("queue: disk full while writing %d messages: %s", len(batch), first)
            try:
                self._make_room(needed=sum(len(row.payload) + 64 for row in batch))
                return self._put(batch, state)
            except (sqlite3.Error, OSError) as err:
                self._set_degraded(f"disk full: {err}")
                raise QueueFullError(f"queue write failed, disk full: {err}") from err

    def _rows(self, messages: Iterable[Outgoing]) -> list[_Row]:
        """Messages as rows: alarms one each, telemetry in chunks (``chunks``).

        A reading is rendered JSON (the engine's) or packed as v3 queued it (a
        salvage, a tool): a chunk of one keeps a packed payload as it is, a
        longer chunk packs its readings' JSON once, joined by newlines. A
        payload that is neither stays a row of its own, in its place, for the
        uplink to find damaged.
        """
        rows: list[_Row] = []
        first: Outgoing | None = None  # the open chunk's first reading
        texts: list[bytes] = []  # the open chunk's readings, as JSON
        size = 0
        one = self.chunk_readings == 1
        for m in messages:
            if m.lane is not Lane.TELEMETRY:
                rows.append(_Row(m.msg_id, m.lane, m.topic, m.payload, 1))
                continue
            payload = m.payload
            if one:
                packed = payload if payload[:1] != b"{" else pack_row(payload)
                rows.append(_Row(m.msg_id, Lane.TELEMETRY, m.topic, packed, 1))
                continue
            try:
                text = payload if payload[:1] == b"{" else unpack_row(payload)
            except WireError:
                text = b"\n"  # not a reading we can chunk
            alone = b"\n" in text  # JSON text never holds a raw newline
            if first is not None and (
                alone
                or m.topic != first.topic
                or len(texts) >= self.chunk_readings
                or size + len(text) > self.chunk_bytes
            ):
                rows.append(_chunk_row(first, texts))
                first, texts, size = None, [], 0
            if alone:  # a row of its own, as given, in its place
                rows.append(_Row(m.msg_id, Lane.TELEMETRY, m.topic, payload, 1))
                continue
            if first is None:
                first = m
            texts.append(text)
            size += len(text) + 1
        if first is not None:
            rows.append(_chunk_row(first, texts))
        return rows

    def _put(self, batch: list[_Row], state: Mapping[str, str | None] | None) -> int:
        now = self._clock()
        accepted: dict[Lane, int] = dict.fromkeys(Lane, 0)
        new_topics: dict[str, int] = {}
        with _Transaction(self.db):
            # One pass of Python per row: the tuple executemany binds, per lane.
            by_lane: tuple[list[tuple[str | bytes, int, bytes, float, int]], ...] = ([], [])
            topics = self._topics
            size = 0
            for m in batch:
                topic = topics.get(m.topic) or new_topics.get(m.topic)
                if topic is None:
                    cursor = self.db.execute("INSERT INTO topics (topic) VALUES (?)", (m.topic,))
                    topic = new_topics[m.topic] = int(cursor.lastrowid or 0)
                payload = m.payload
                size += len(payload)
                by_lane[m.lane].append((encode_id(m.msg_id), topic, payload, now, m.n))
            # Room before the rows go in, so the file does not grow past the bound
            # for the batch. State alone (the uplink's session counter at start)
            # makes room for nothing.
            made_room: dict[str, int] = {}
            # A commit with an alarm in it stays light: it makes room for itself
            # (and a few pages the estimate may miss), never for the backlog.
            step = 4 if by_lane[Lane.ALARM] else EVICT_STEP_PAGES
            if batch:
                incoming = (size + 64 * len(batch)) * 5 // (4 * self._page_size)
                made_room = self._evict_within_bounds(incoming, {}, step)
            for lane, rows in zip(Lane, by_lane, strict=True):
                accepted[lane] = self._insert(lane, rows)
            if state:
                self._write_state(state)
            delta = {f"depth_{lane.name.lower()}": n for lane, n in accepted.items() if n}
            _bump(self.db, delta)
            for name, n in made_room.items():
                delta[name] = delta.get(name, 0) + n
            evicted = self._evict_within_bounds(0, dict(delta), step) if batch else {}
        self._applied(delta)
        self._applied(evicted)
        for name, topic_id in new_topics.items():
            self._topics[name] = topic_id
            self._topic_names[topic_id] = name
        for lane, n in accepted.items():
            if n and self._oldest[lane] is None:
                self._oldest[lane] = now
        if evicted or made_room:
            self._refresh_oldest()
        return sum(accepted.values())

    def _write_state(self, state: Mapping[str, str | None]) -> None:
        """State rows in statements of many rows, as ``_insert`` writes messages: with
        unregistered nodes churning through their LRU a commit writes and deletes
        hundreds, and a statement per row released and took back the GIL per row."""
        puts = [v for k, value in state.items() if value is not None for v in (k, value)]
        for start, size in _statements(len(puts) // 2):
            self.db.execute(_state_put_sql(size), puts[2 * start : 2 * (start + size)])
        gone = [k for k, value in state.items() if value is None]
        for start, size in _statements(len(gone)):
            self.db.execute(_state_delete_sql(size), gone[start : start + size])

    def _insert(self, lane: Lane, rows: list[tuple[str | bytes, int, bytes, float, int]]) -> int:
        """Rows in order, in statements of many rows: one step (and one AUTOINCREMENT
        update, one release of the GIL) per statement instead of per row. Measured
        3.7 → 2.6 µs CPU a row (insert, commit and peek) against executemany.

        A chunk of several readings goes in a statement of its own, so that what
        a known id leaves out (``INSERT OR IGNORE``) is counted in readings.
        """
        accepted = 0
        start = 0
        while start < len(rows):
            if rows[start][4] > 1:
                cursor = self.db.execute(_insert_sql(lane, 1), rows[start])
                accepted += max(0, cursor.rowcount) * rows[start][4]
                start += 1
                continue
            run = start  # the run of one-reading rows from here
            while run < len(rows) and rows[run][4] == 1 and run - start < _INSERT_SIZES[0]:
                run += 1
            size = _statement_size(run - start)
            chunk = rows[start : start + size]
            cursor = self.db.execute(_insert_sql(lane, size), [v for row in chunk for v in row])
            accepted += max(0, cursor.rowcount)
            start += size
        return accepted

    def ack(self, seqs: Sequence[int]) -> None:
        """The broker has the messages: forget them (if the disk refuses, hold that in memory)."""
        if not seqs:
            return
        ordered = sorted(set(seqs))
        with self._lock:
            self._retry_held_acks()
            try:
                delta = self._with_room(lambda: self._delete_seqs(ordered))
            except sqlite3.Error as err:
                if _is_damage(err):
                    self._on_damage(err)  # what was salvaged is published again: harmless
                    return
                self._hold_acks(ordered, err)
                return
            self._applied(delta)
            if any(delta.values()):
                self._refresh_oldest()

    def ack_ids(self, msg_ids: Sequence[str]) -> None:
        """``ack`` by message id: for a message published before its sequence number was known
        (the uplink sends an alarm while its commit is under way)."""
        if not msg_ids:
            return
        with self._lock:
            try:
                seqs = [
                    int(seq)
                    for m in msg_ids
                    for (seq,) in self.db.execute(
                        "SELECT seq FROM outbox WHERE msg_id = ?", (encode_id(m),)
                    )
                ]
            except sqlite3.Error as err:
                raise QueueError(f"queue read failed: {err}") from err
            self.ack(seqs)

    def _with_room(self, write: Callable[[], _T]) -> _T:
        """One transaction; on a full disk, checkpoint (so the WAL starts over) and try once more.

        A WAL that cannot restart needs new blocks even for a delete.
        """
        try:
            with _Transaction(self.db):
                return write()
        except sqlite3.Error as err:
            if not _is_disk_trouble(err):
                raise
        self._checkpoint()
        with _Transaction(self.db):
            return write()

    def _checkpoint(self) -> None:
        try:
            row = self.db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()  # never waits
            log.debug("queue: checkpoint (busy, frames, copied): %s", row)
        except sqlite3.Error as err:
            log.debug("queue: checkpoint failed: %s", err)

    def _delete_seqs(self, seqs: list[int]) -> dict[str, int]:
        """``seqs`` sorted and distinct. A run of consecutive numbers (a telemetry
        round is mostly one) goes as one range; the rest in IN lists."""
        gone = dict.fromkeys(Lane, 0)
        singles: list[int] = []
        for low, high in _runs(seqs):
            if low == high:
                singles.append(low)
                continue
            # Alarms in the range by their partial index, then the rest is telemetry
            # (its readings counted from the rows as they go).
            alarms = self.db.execute(_DELETE_RANGE_ALARMS, (low, high)).rowcount
            gone[Lane.ALARM] += max(0, alarms)
            gone[Lane.TELEMETRY] += _readings(self.db.execute(_DELETE_RANGE, (low, high)))
        for start in range(0, len(singles), CHUNK):
            chunk = singles[start : start + CHUNK]
            marks = ",".join("?" * len(chunk))
            for lane in Lane:
                cursor = self.db.execute(
                    f"DELETE FROM outbox WHERE lane = ? AND seq IN ({marks}) RETURNING n",  # noqa: S608 - only placeholders
                    (int(lane), *chunk),
                )
                gone[lane] += _readings(cursor)
        delta = {f"depth_{lane.name.lower()}": -n for lane, n in gone.items() if n}
        _bump(self.db, delta)
        return delta

    def _hold_acks(self, seqs: list[int], err: sqlite3.Error) -> None:
        """Published but not deletable: remember, skip in peek, delete later."""
        try:
            for start in range(0, len(seqs), CHUNK):
                chunk = seqs[start : start + CHUNK]
                marks = ",".join("?" * len(chunk))
                self.db.execute(  # only placeholders are formatted in
                    "INSERT OR IGNORE INTO temp.held_acks (seq, lane, n)"  # noqa: S608
                    f" SELECT seq, lane, n FROM outbox WHERE seq IN ({marks})",
                    chunk,
                )
            self._count_held()
        except sqlite3.Error as again:
            # Even memory refused: the rows will simply be published again.
            log.error("queue: cannot hold %d acks: %s", len(seqs), again)  # noqa: TRY400
        self._set_degraded(f"acks cannot be written: {err}")
        log.warning("queue: ack not written (%s); %d acks held", err, sum(self._held.values()))

    def _count_held(self) -> None:
        held = dict.fromkeys(Lane, 0)
        for lane, count in self.db.execute("SELECT lane, SUM(n) FROM temp.held_acks GROUP BY lane"):
            held[Lane(lane)] = int(count)
        self._held = held  # one assignment: stats() on the loop never sees half of it

    def _retry_held_acks(self) -> None:
        if not any(self._held.values()):
            return

        def delete() -> dict[str, int]:
            delta = {}
            for lane in Lane:
                cursor = self.db.execute(
                    "DELETE FROM outbox WHERE seq IN (SELECT seq FROM temp.held_acks) AND lane = ?"
                    " RETURNING n",
                    (int(lane),),
                )
                delta[f"depth_{lane.name.lower()}"] = -_readings(cursor)
            _bump(self.db, delta)
            return delta

        try:
            delta = self._with_room(delete)
        except sqlite3.Error as err:
            log.debug("queue: held acks still not written: %s", err)
            return
        self.db.execute("DELETE FROM temp.held_acks")
        self._held = dict.fromkeys(Lane, 0)
        self._applied(delta)
        self._refresh_oldest()
        log.info("queue: held acks written")

    def _applied(self, delta: Mapping[str, int]) -> None:
        """After a commit: a new dict, so stats() on another thread never sees one change."""
        counters = dict(self._counters)
        for name, n in delta.items():
            counters[name] = counters.get(name, 0) + n
        self._counters = counters
        self._depth = {lane: self._counters.get(f"depth_{lane.name.lower()}", 0) for lane in Lane}

    # --- the bound ---

    def _pages_budget(self, bound: int | None = None) -> int:
        """Pages the database may use: a bound less the WAL and the reserve file.

        The WAL is checkpointed at half a reserve and truncated to one; with
        the batch in flight it stays under two (``WAL_ALLOWANCE``); a few
        pages of slack cover b-tree splits.
        """
        spare = (1 + WAL_ALLOWANCE) * self.reserve_bytes
        bound = self._bound if bound is None else bound
        return max(0, (bound - spare) // self._page_size - 4)

    def _evict_within_bounds(
        self, incoming: int, pending: dict[str, int], step: int
    ) -> dict[str, int]:
        """Telemetry goes to keep the working bound (lower while the disk is short);
        alarms only to keep the configured one: a short disk never costs an alarm.

        A file larger than its bound (``max_bytes`` lowered, a backlog written
        by a tool, a disk found short) cannot shrink: SQLite keeps its free
        pages. So past the bound a commit evicts only what keeps the file from
        growing: nothing while acknowledged rows left free pages for it, else
        its own pages plus ``step`` (for the next commits). No single commit
        (the first one at start among them) deletes half a million rows while
        alarms and the ``online`` status wait behind it, and a draining
        backlog costs no evictions at all.
        """
        both = (Lane.TELEMETRY, Lane.ALARM)
        (pages,) = self.db.execute("PRAGMA page_count").fetchone()
        (free,) = self.db.execute("PRAGMA freelist_count").fetchone()
        used = int(pages) - int(free)
        if used + incoming <= min(self._pages_budget(), self._pages_budget(self.max_bytes)):
            return {}
        floor = min(used, int(pages) - incoming - step)  # the file does not grow
        budget = max(0, self._pages_budget() - incoming, floor)
        delta = self._evict_to(budget, pending)
        for name, n in delta.items():
            pending[name] = pending.get(name, 0) + n
        budget = max(0, self._pages_budget(self.max_bytes) - incoming, floor)
        more = self._evict_to(budget, pending, both)
        for name, n in more.items():
            delta[name] = delta.get(name, 0) + n
        return delta

    def _used_pages(self) -> int:
        (pages,) = self.db.execute("PRAGMA page_count").fetchone()
        (free,) = self.db.execute("PRAGMA freelist_count").fetchone()
        return int(pages) - int(free)

    def _evict_to(
        self, budget: int, pending: dict[str, int], lanes: tuple[Lane, ...] = (Lane.TELEMETRY,)
    ) -> dict[str, int]:
        """Inside a transaction: delete the oldest of ``lanes``, in that order, until under budget.

        ``pending`` is this transaction's depth change so far, so the estimate
        of rows per page sees the rows just added. One log line per lane.
        """
        delta = self._evict_rows(budget, pending, lanes)
        for lane in lanes:
            if gone := delta.get(f"evicted_{lane.name.lower()}", 0):
                log.warning("queue full: evicted %d %s messages", gone, lane.name.lower())
        return delta

    def _evict_rows(
        self, budget: int, pending: dict[str, int], lanes: tuple[Lane, ...]
    ) -> dict[str, int]:
        delta: dict[str, int] = {}
        for lane in lanes:
            for _ in range(64):
                excess = self._used_pages() - budget
                if excess <= 0:
                    return delta
                depth_name = f"depth_{lane.name.lower()}"
                rows = self._depth[lane] + pending.get(depth_name, 0) + delta.get(depth_name, 0)
                if rows <= 0:
                    break
                total = sum(
                    self._depth[x]
                    + pending.get(f"depth_{x.name.lower()}", 0)
                    + delta.get(f"depth_{x.name.lower()}", 0)
                    for x in Lane
                )
                per_page = max(1.0, total / max(1, self._used_pages()))
                victims = max(1, int(excess * per_page) + 1)  # in readings, as the depth
                gone = self._evict_oldest(lane, victims)
                if gone == 0:
                    break
                step = {depth_name: -gone, f"evicted_{lane.name.lower()}": gone}
                _bump(self.db, step)
                for name, n in step.items():
                    delta[name] = delta.get(name, 0) + n
        return delta

    def _evict_oldest(self, lane: Lane, readings: int) -> int:
        """Delete the oldest whole rows of ``lane`` holding about ``readings``; their readings."""
        rows = self.db.execute(
            "SELECT seq, n FROM outbox WHERE lane = ?"
            " AND seq NOT IN (SELECT seq FROM temp.held_acks) ORDER BY seq LIMIT ?",
            (int(lane), readings),  # a row holds at least one reading
        )
        victims: list[int] = []
        total = 0
        try:
            for seq, n in rows:
                victims.append(seq)
                total += n
                if total >= readings:
                    break
        finally:
            rows.close()
        gone = 0
        for start in range(0, len(victims), CHUNK):
            chunk = victims[start : start + CHUNK]
            marks = ",".join("?" * len(chunk))
            gone += _readings(
                self.db.execute(
                    f"DELETE FROM outbox WHERE seq IN ({marks}) RETURNING n",  # noqa: S608 - only placeholders
                    chunk,
                )
            )
        return gone

    def _make_room(self, *, needed: int) -> None:
        """After SQLITE_FULL: free the reserve, checkpoint, shrink the bound, evict to it."""
        with contextlib.suppress(OSError):
            self.reserve_path.unlink()
        self._checkpoint()
        self._retry_held_acks()
        # The database file does not shrink: the room must come from its own
        # pages, below what it uses now.
        used = self._used_pages() * self._page_size
        room = max(needed * 2, used // 8, self.reserve_bytes)
        spare = (1 + WAL_ALLOWANCE) * self.reserve_bytes + 4 * self._page_size
        self._bound = max(0, min(self._bound, used - room + spare))
        self._set_degraded("disk full")
        log.warning("queue: disk full; working bound lowered to %d bytes", self._bound)
        # In steps small enough for the WAL the disk still holds, a checkpoint
        # between them so the WAL starts over each time.
        step = max(1, self.reserve_bytes // (4 * self._page_size))
        budget = self._pages_budget()
        while (used_pages := self._used_pages()) > budget:
            target = max(budget, used_pages - step)
            evicted = self._with_room(lambda t=target: self._evict_to(t, {}))  # type: ignore[misc]
            self._applied(evicted)
            self._checkpoint()
            if not evicted:
                break
        self._refresh_oldest()

    def _ensure_reserve(self) -> bool:
        """The reserve file: real blocks, so giving it back really frees space."""
        try:
            if (
                self.reserve_path.exists()
                and self.reserve_path.stat().st_size >= self.reserve_bytes
            ):
                return True
            fd = os.open(self.reserve_path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.reserve_bytes)
            finally:
                os.close(fd)
        except OSError as err:
            with contextlib.suppress(OSError):
                self.reserve_path.unlink()
            self._set_degraded(f"no room for the {self.reserve_bytes}-byte reserve: {err}")
            return False
        return True

    def _maintain(self) -> None:
        """Before each write a degraded queue tries to get back to its configured bound."""
        if self._degraded is None:
            return
        self._retry_held_acks()
        if any(self._held.values()):
            return
        if not self._ensure_reserve():
            return
        try:
            free = os.statvfs(self.path.parent)
        except OSError:
            return
        if free.f_bavail * free.f_frsize < 2 * self.reserve_bytes:
            return
        self._bound = self.max_bytes
        log.warning("queue: storage recovered (was: %s)", self._degraded)
        self._degraded = None

    def recover(self) -> None:
        """Check now whether a degraded queue has room again (the writer does this itself)."""
        with self._lock:
            self._maintain()

    def _set_degraded(self, reason: str) -> None:
        if self._degraded is None:
            log.warning("queue: storage degraded: %s", reason)
        self._degraded = reason

    # --- reading ---

    def get_state(self, key: str) -> str | None:
        with self._lock:
            try:
                row = self.db.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
            except sqlite3.Error as err:
                raise QueueError(f"queue read failed: {err}") from err
        return None if row is None else str(row[0])

    def state_items(self, prefix: str) -> Iterator[tuple[str, str]]:
        """Every state row whose key starts with ``prefix``, in key order."""
        upper = prefix + "\U0010ffff"
        with self._lock:
            try:
                rows = self.db.execute(
                    "SELECT key, value FROM state WHERE key >= ? AND key < ? ORDER BY key",
                    (prefix, upper),
                ).fetchall()
            except sqlite3.Error as err:
                raise QueueError(f"queue read failed: {err}") from err
        for key, value in rows:
            yield str(key), str(value)

    def peek(self, limit: int) -> list[Queued]:
        """The next rows to publish: all alarms first, then telemetry oldest first.

        ``limit`` counts readings: whole rows up to it (the last row may take
        the count past it by less than its own readings; one row at least).

        Rows whose ack is held in memory are skipped; past ``MAX_HELD_ACKS``
        nothing is offered until the disk takes the acks.
        """
        return self._read(lambda: self._peek(limit))

    def peek_lane(self, lane: Lane, limit: int, *, after: int = 0) -> list[Queued]:
        """One lane's next rows with ``seq > after``, oldest first; ``limit`` in readings.

        The uplink drains each lane on its own path, so an alarm never waits
        behind a telemetry round (and ``after`` skips what it already has in flight).
        """
        return self._read(lambda: self._lane_rows(lane, limit, after))

    def _read(self, query: Callable[[], list[Queued]]) -> list[Queued]:
        with self._lock:
            if sum(self._held.values()) >= MAX_HELD_ACKS:
                self._retry_held_acks()
                if sum(self._held.values()) >= MAX_HELD_ACKS:
                    return []
            try:
                return query()
            except sqlite3.Error as err:
                if not _is_damage(err):
                    raise QueueError(f"queue read failed: {err}") from err
                self._on_damage(err)
            try:
                return query()
            except sqlite3.Error as err:
                raise QueueError(f"queue read failed: {err}") from err

    def _peek(self, limit: int) -> list[Queued]:
        out: list[Queued] = []
        readings = 0
        for lane in Lane:
            if readings < limit:
                rows = self._lane_rows(lane, limit - readings, 0)
                out += rows
                readings += sum(q.n for q in rows)
        return out

    def _lane_rows(self, lane: Lane, limit: int, after: int) -> list[Queued]:
        if not self._depth[lane]:
            return []
        skip = (
            " AND seq NOT IN (SELECT seq FROM temp.held_acks)" if any(self._held.values()) else ""
        )
        cursor = self.db.execute(
            "SELECT seq, msg_id, topic, payload, created, n FROM outbox"  # noqa: S608 - fixed text
            f" WHERE lane = ? AND seq > ?{skip} ORDER BY seq LIMIT ?",
            (int(lane), after, limit),  # rows: at most one per reading
        )
        names = self._topic_names
        out: list[Queued] = []
        readings = 0
        try:
            for seq, msg_id, topic, payload, created, n in cursor:
                out.append(
                    Queued(
                        seq,
                        Outgoing(
                            msg_id.hex() if type(msg_id) is bytes else str(msg_id),  # decode_id
                            lane,
                            names[topic],
                            payload,
                        ),
                        created,
                        n,
                    )
                )
                readings += n
                if readings >= limit:
                    break
        finally:
            cursor.close()
        return out

    def _refresh_oldest(self) -> None:
        """After a commit, for stats() only: a failure here must not undo the commit's success."""
        skip = (
            " AND seq NOT IN (SELECT seq FROM temp.held_acks)" if any(self._held.values()) else ""
        )
        oldest = dict(self._oldest)
        try:
            for lane in Lane:
                row = self.db.execute(
                    f"SELECT created FROM outbox WHERE lane = ?{skip} ORDER BY seq LIMIT 1",  # noqa: S608
                    (int(lane),),
                ).fetchone()
                oldest[lane] = None if row is None else float(row[0])
        except sqlite3.Error as err:
            log.debug("queue: oldest age not refreshed: %s", err)
        self._oldest = oldest

    def disk_bytes(self) -> int:
        """The database and its WAL as they are on disk (what the bound is about)."""
        total = 0
        for name in (str(self.path), f"{self.path}-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(name).st_size
        return total

    def stats(self) -> QueueStats:
        """Memory only: never waits for the writer, never scans."""
        oldest = [t for t in self._oldest.values() if t is not None]
        age = None if not oldest else max(0.0, self._clock() - min(oldest))
        depth = {lane: max(0, self._depth[lane] - self._held[lane]) for lane in Lane}
        evicted = {lane: self._counters.get(f"evicted_{lane.name.lower()}", 0) for lane in Lane}
        extra = {
            name: value
            for name, value in self._counters.items()
            if name.startswith(("salvaged_", "lost_"))
        }
        return QueueStats(
            depth,
            self.disk_bytes(),
            age,
            evicted,
            self._degraded,
            sum(self._held.values()),
            extra,
        )

    # --- salvage ---

    def _salvage(self, aside: Path) -> None:
        """Copy every row still readable from a damaged file; count what was and was not."""
        saved = dict.fromkeys(Lane, 0)
        unreadable = 0
        expected: int | None = None
        try:
            old = sqlite3.connect(f"file:{aside}?mode=ro", uri=True, isolation_level=None)
        except sqlite3.Error as err:
            log.error("queue salvage: %s cannot be opened: %s", aside, err)  # noqa: TRY400
            old = None
        if old is not None:
            try:
                saved, unreadable, expected = self._salvage_from(old)
            finally:
                old.close()
        lost = unreadable if expected is None else max(0, expected - sum(saved.values()))
        delta = {f"salvaged_{lane.name.lower()}": n for lane, n in saved.items()}
        delta["lost_unreadable"] = lost
        with _Transaction(self.db):
            _bump(self.db, delta)
        log.warning(
            "queue salvage from %s: %d alarms and %d readings kept, %d lost",
            aside,
            saved[Lane.ALARM],
            saved[Lane.TELEMETRY],
            lost,
        )

    def _salvage_from(self, old: sqlite3.Connection) -> tuple[dict[Lane, int], int, int | None]:
        saved = dict.fromkeys(Lane, 0)
        unreadable = 0
        expected: int | None = None
        with contextlib.suppress(sqlite3.Error):
            counts = dict(old.execute("SELECT name, value FROM counters").fetchall())
            if "depth_alarm" in counts or "depth_telemetry" in counts:
                expected = int(counts.get("depth_alarm", 0)) + int(counts.get("depth_telemetry", 0))
        topics: dict[int, str] = {}
        with contextlib.suppress(sqlite3.Error):
            topics = {int(i): str(t) for i, t in old.execute("SELECT id, topic FROM topics")}
        try:
            (top,) = old.execute("SELECT MAX(seq) FROM outbox").fetchone()
        except sqlite3.Error:
            top = None
        if top is None:
            with contextlib.suppress(sqlite3.Error):
                row = old.execute(
                    "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'"
                ).fetchone()
                top = None if row is None else row[0]
        if top is None:
            return saved, unreadable, expected
        query = "SELECT seq, msg_id, lane, topic, payload FROM outbox WHERE seq >= ? AND seq < ?"
        for start in range(0, int(top) + 1, SALVAGE_STEP):
            try:
                rows = old.execute(query, (start, start + SALVAGE_STEP)).fetchall()
            except sqlite3.Error:
                rows = []
                for seq in range(start, start + SALVAGE_STEP):
                    try:
                        rows += old.execute(query, (seq, seq + 1)).fetchall()
                    except sqlite3.Error:
                        unreadable += 1
            keep: list[_Row] = []
            for _, msg_id, lane, topic, payload in rows:
                name = topics.get(topic) if isinstance(topic, int) else topic
                if name is None or lane not in (0, 1) or not isinstance(payload, bytes):
                    unreadable += 1
                    continue
                count = _readings_in(payload) if lane == Lane.TELEMETRY else 1
                keep.append(_Row(decode_id(msg_id), Lane(lane), str(name), payload, count))
            if keep:  # rows as they were: a chunk stays one row
                self._put(keep, None)
                for row in keep:
                    saved[row.lane] += row.n
        return saved, unreadable, expected


def _readings_in(payload: bytes) -> int:
    """A salvaged telemetry row's readings, from the payload itself (the file's own
    ``n`` column, if it has one, is no more trustworthy than the rest of it)."""
    try:
        return unpack_row(payload).count(b"\n") + 1
    except WireError:
        return 1  # kept as it is: the uplink finds it damaged and counts it as one


def _bump(db: sqlite3.Connection, delta: Mapping[str, int]) -> None:
    db.executemany(
        "INSERT INTO counters (name, value) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        [(k, v) for k, v in delta.items() if v],
    )


def _closed_cleanly(db: sqlite3.Connection) -> bool:
    try:
        row = db.execute("SELECT value FROM counters WHERE name = 'clean_close'").fetchone()
    except sqlite3.OperationalError:  # no counters table yet: new, or older than v3
        return not db.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone()
    return row is not None and row[0] == 1


def _integrity_check(db: sqlite3.Connection) -> None:
    (check,) = db.execute("PRAGMA quick_check").fetchone()
    if check != "ok":
        raise sqlite3.DatabaseError(f"quick_check: {check}")


def _migrate_v1(db: sqlite3.Connection) -> None:
    _script(db, _DDL_V1)


def _migrate_v2(db: sqlite3.Connection) -> None:
    _script(db, _DDL_V2)


def _migrate_v3(db: sqlite3.Connection) -> None:
    """Rows keep their sequence numbers (and so their order); the depth is counted once.

    One INSERT … SELECT with the id and topic mapping as SQL functions: a
    Python loop over a million rows took minutes on a small box.
    """
    _script(db, _DDL_V3)
    topics: dict[str, int] = {}

    def topic_id(topic: object) -> int:
        return topics.setdefault(str(topic), len(topics) + 1)

    db.create_function("covergw_id", 1, lambda v: encode_id(str(v)), deterministic=True)
    db.create_function("covergw_topic", 1, topic_id)
    db.execute(
        "INSERT INTO outbox_v3 (seq, msg_id, lane, topic, payload, created)"
        " SELECT seq, covergw_id(msg_id), lane, covergw_topic(topic), payload, created"
        " FROM outbox ORDER BY seq"
    )
    db.executemany(
        "INSERT INTO topics (id, topic) VALUES (?, ?)", [(i, t) for t, i in topics.items()]
    )
    depth = {Lane(lane): int(n) for lane, n in db.execute(_COUNT_V2)}  # the (lane, seq) index
    row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    _script(db, _DDL_V3_AFTER)
    if row is not None:  # seq numbers are never reused, even across the migration
        db.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name = 'outbox'", row)
        db.execute(
            "INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox', ?"
            " WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'outbox')",
            row,
        )
    _bump(db, {f"depth_{lane.name.lower()}": n for lane, n in depth.items()})


_COUNT_V2 = "SELECT lane, COUNT(*) FROM outbox GROUP BY lane"
# Rows per INSERT statement: a batch goes in the largest that fit, so a few
# statement texts (cached by sqlite3) serve every batch size.
_INSERT_SIZES = (100, 64, 32, 16, 8, 4, 2, 1)


def _statement_size(count: int) -> int:
    """Rows in the next statement for COUNT to write: a few statement shapes, each prepared
    once (the connection's statement cache), instead of one per count."""
    return next(n for n in _INSERT_SIZES if n <= count)


def _statements(count: int) -> Iterator[tuple[int, int]]:
    """(first row, rows) of each statement that writes COUNT rows."""
    start = 0
    while start < count:
        size = _statement_size(count - start)
        yield start, size
        start += size


@functools.cache
def _state_put_sql(rows: int) -> str:
    placeholders = ",".join(["(?, ?)"] * rows)  # only placeholders: the values are bound
    return "INSERT OR REPLACE INTO state (key, value) VALUES " + placeholders  # noqa: S608


@functools.cache
def _state_delete_sql(rows: int) -> str:
    return "DELETE FROM state WHERE key IN (" + ",".join(["?"] * rows) + ")"  # noqa: S608


@functools.cache
def _insert_sql(lane: Lane, rows: int) -> str:
    """The lane is a constant of the statement: one fewer value bound per row."""
    values = f"(?, {int(lane)}, ?, ?, ?, ?)"  # an int of our own enum, never input
    return (
        "INSERT OR IGNORE INTO outbox (msg_id, lane, topic, payload, created, n) VALUES "  # noqa: S608
        + ",".join([values] * rows)
    )


_DELETE_RANGE_ALARMS = "DELETE FROM outbox WHERE seq BETWEEN ? AND ? AND lane = 0"
_DELETE_RANGE = "DELETE FROM outbox WHERE seq BETWEEN ? AND ? RETURNING n"


def _readings(cursor: sqlite3.Cursor) -> int:
    """The readings in the rows a ``… RETURNING n`` statement touched (it runs as they are read)."""
    return sum(n for (n,) in cursor)


def _runs(ordered: list[int]) -> Iterator[tuple[int, int]]:
    """Runs of consecutive numbers in a sorted, distinct list, as (first, last)."""
    if not ordered:
        return
    if ordered[-1] - ordered[0] + 1 == len(ordered):  # the usual telemetry round
        yield ordered[0], ordered[-1]
        return
    low = high = ordered[0]
    for seq in ordered[1:]:
        if seq != high + 1:
            yield low, high
            low = seq
        high = seq
    yield low, high


def _script(db: sqlite3.Connection, ddl: str) -> None:
    for statement in filter(str.strip, ddl.split(";")):
        db.execute(statement)


def _migrate_v4(db: sqlite3.Connection) -> None:
    """Every v3 row is a chunk of one reading: the depth counters are already in readings."""
    _script(db, _DDL_V4)


_MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {
    1: _migrate_v1,
    2: _migrate_v2,
    3: _migrate_v3,
    4: _migrate_v4,
}


class _Writer:
    """The one thread that runs the queue's jobs for the event loop, one at a time.

    Two waiting lines: an urgent job (an alarm's commit, peek or ack) is
    taken before every ordinary one already waiting, so an alarm waits for
    at most the job in progress, never for a line of telemetry peeks and
    acks. Within a line, first come first served. ``shutdown`` runs what is
    waiting, then ends the thread.
    """

    def __init__(self) -> None:
        self._lines: tuple[deque[_Job], deque[_Job]] = (deque(), deque())  # urgent, ordinary
        self._ready = threading.Condition(threading.Lock())
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="queue-writer", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], _T], *, urgent: bool) -> asyncio.Future[_T]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[_T] = loop.create_future()
        with self._ready:
            if self._closed:
                raise QueueError("queue is closing")
            self._lines[0 if urgent else 1].append(_Job(fn, future, loop))
            self._ready.notify()
        return future

    def shutdown(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        urgent, ordinary = self._lines
        while True:
            with self._ready:
                while not urgent and not ordinary and not self._closed:
                    self._ready.wait()
                if not urgent and not ordinary:
                    return
                job = urgent.popleft() if urgent else ordinary.popleft()
            job.run()


@dataclass(frozen=True, slots=True)
class _Job:
    fn: Callable[[], object]
    future: asyncio.Future[Any]
    loop: asyncio.AbstractEventLoop

    def run(self) -> None:
        if self.future.cancelled():  # given up before it started, as an executor would
            return
        try:
            result = self.fn()
        except BaseException as err:  # handed to the waiter, whatever it is
            self._hand(_fail, err)
        else:
            self._hand(_resolve, result)

    def _hand(self, how: Callable[[asyncio.Future[Any], Any], None], value: object) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self.loop.call_soon_threadsafe(how, self.future, value)


def _resolve(future: asyncio.Future[Any], result: object) -> None:
    if not future.done():
        future.set_result(result)


def _fail(future: asyncio.Future[Any], err: BaseException) -> None:
    if not future.done():
        future.set_exception(err)


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
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
            except sqlite3.Error:
                with contextlib.suppress(sqlite3.Error):
                    self.db.execute("ROLLBACK")
                raise
        else:
            with contextlib.suppress(sqlite3.Error):
                self.db.execute("ROLLBACK")
