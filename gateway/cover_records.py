"""Each cover's record, retained on a topic of its own, for the compact telemetry encodings.

With ``telemetry_encoding`` ``json-deflate`` or ``cbor`` a batch names each
reading's cover by ``cover_id`` only; the record (``Cover.identity()``, what
alarms carry in ``cover``) is published retained, QoS 1, on
``<root>/cover/<cover_id>``:

- before the first batch that names the cover (awaited, so a platform that
  subscribed before the batch arrives holds the record first), and again on
  a connection where the broker lost the gateway's session: a broker that
  kept the session kept its retained messages (one persistence holds both),
  so a reconnect does not send 100k records again;
- after a reload (SIGHUP or the ``reload`` command): the records that changed
  are published again, and a removed cover's retained message is cleared with
  an empty retained payload;
- at start, for a cover removed while the gateway was stopped: the covers
  that may hold a retained record (the registry's, and those still to clear)
  are kept in the queue's state (``held``), and those the registry no longer
  has are cleared on the first connection.

docs/mqtt-api.md "Cover records" is the platform's side of it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from gateway.mqtt_client import PublishRefusedError

log = logging.getLogger(__name__)

__all__ = ["CoverRecords", "cover_topic"]

# Characters a topic level cannot carry as they are: the level separator, the wildcards,
# control characters (NUL is forbidden in MQTT strings), and "%" itself.
_ESCAPED = frozenset("%/+#\x7f") | frozenset(chr(c) for c in range(0x20))
PUBLISH_AT_ONCE = 64  # records in flight at a time, so a first round cannot flood the broker


def cover_topic(topic_root: str, cover_id: str) -> str:
    """``<root>/cover/<cover_id>``, the id percent-encoded where a topic level needs it."""
    if not _ESCAPED.isdisjoint(cover_id):
        cover_id = "".join(f"%{ord(ch):02X}" if ch in _ESCAPED else ch for ch in cover_id)
    return f"{topic_root}/cover/{cover_id}"


class Identified(Protocol):
    """A registry entry as this module sees it (``gateway.registry.Cover``)."""

    def identity(self) -> dict[str, Any]: ...


class RecordClient(Protocol):
    """What publishing a record needs (``gateway.mqtt_client.UplinkClient``)."""

    session_present: bool  # the broker kept our session (and its retained messages)

    async def publish_acked(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> None: ...


def _payload(record: dict[str, Any]) -> bytes:
    return json.dumps(record, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


class CoverRecords:
    """Publishes cover records retained, once per broker session, and again when they change.

    ``covers`` returns the registry's covers as loaded now (a reload replaces
    the mapping; it is never changed in place). No record is queued on disk:
    a record is derived from the registry, so whatever did not reach the
    broker is published again on the next connection. What is kept (by
    ``store``, in the queue's state) is which covers may hold a retained
    record: ``held`` is what the last run kept, and those of them the
    registry no longer has are cleared.
    """

    def __init__(
        self,
        *,
        topic_root: str,
        covers: Callable[[], Mapping[str, Identified]],
        held: Iterable[str] = (),
        store: Callable[[list[str]], Awaitable[bool]] | None = None,
    ) -> None:
        self.topic_root = topic_root
        self._covers = covers
        self._loaded = covers()  # the registry the last refresh() saw
        self._client: object | None = None
        self._published: set[str] = set()  # in the broker's current session
        self._stale: set[str] = set()  # changed by a reload, to publish again
        # Removed by a reload or while the gateway was stopped: retained record to clear.
        held = set(held)
        self._cleared: set[str] = held - self._loaded.keys()
        self._store = store
        self._kept = held  # what ``store`` last kept
        self.published = 0  # records published (counted, for tests and logs)
        self.cleared = 0
        self.refused = 0  # records the broker refused (e.g. an ACL); telemetry goes on
        self._warned = False

    def refresh(self) -> None:
        """After a reload: forget what changed (published again when next needed or at
        the next ``flush``) and mark removed covers for clearing."""
        old, new = self._loaded, self._covers()
        if new is old:
            return
        self._loaded = new
        removed = old.keys() - new.keys()
        changed = {c for c in old.keys() & new.keys() if old[c].identity() != new[c].identity()}
        self._cleared = (self._cleared | removed) - new.keys()
        # A changed record must go again even if this connection published it already.
        self._stale = (self._stale | changed) - removed
        self._published -= changed | removed
        if removed or changed:
            log.info("cover records: %d changed, %d removed", len(changed), len(removed))

    async def ensure(self, client: RecordClient, cover_ids: Iterable[str]) -> None:
        """Publish the record of each cover not yet published in this broker session."""
        self._session(client)
        wanted = [c for c in dict.fromkeys(cover_ids) if c not in self._published]
        await self._publish(client, wanted)

    async def flush(self, client: RecordClient) -> None:
        """What a reload left to do: changed records published, removed ones cleared."""
        self._session(client)
        if self._stale:
            stale, self._stale = sorted(self._stale), set()
            try:
                await self._publish(client, stale)
            except BaseException:
                self._stale.update(stale)  # again on the next connection
                raise
        if self._cleared:
            cleared, self._cleared = sorted(self._cleared), set()
            try:
                await self._each(client, [(cover_topic(self.topic_root, c), b"") for c in cleared])
            except BaseException:
                self._cleared.update(cleared)  # again on the next connection
                raise
            self.cleared += len(cleared)
        # The covers that may hold a retained record: the registry's, and those still to
        # clear (a cover never named in a batch has none; clearing it costs a publish).
        held = self._loaded.keys() | self._cleared
        if held != self._kept and self._store is not None and await self._store(sorted(held)):
            self._kept = held  # a failed store is tried again at the next flush

    def _session(self, client: RecordClient) -> None:
        if client is not self._client:  # a new connection: did the broker lose them?
            self._client = client
            if not client.session_present:
                self._published.clear()

    async def _publish(self, client: RecordClient, cover_ids: list[str]) -> None:
        covers = self._covers()
        messages = []
        for cover_id in cover_ids:
            cover = covers.get(cover_id)
            if cover is not None:  # removed meanwhile: a reload clears it
                messages.append((cover_id, cover_topic(self.topic_root, cover_id), cover))
        if not messages:
            return
        await self._each(
            client, [(topic, _payload(cover.identity())) for _, topic, cover in messages]
        )
        self._published.update(cover_id for cover_id, _, _ in messages)
        self.published += len(messages)

    async def _each(self, client: RecordClient, messages: list[tuple[str, bytes]]) -> None:
        for start in range(0, len(messages), PUBLISH_AT_ONCE):
            chunk = messages[start : start + PUBLISH_AT_ONCE]
            results = await asyncio.gather(
                *(client.publish_acked(t, p, qos=1, retain=True) for t, p in chunk),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, PublishRefusedError):
                    self._refused(result)
                elif isinstance(result, BaseException):
                    raise result

    def _refused(self, err: PublishRefusedError) -> None:
        self.refused += 1
        if not self._warned:
            self._warned = True
            log.warning(
                "cover records: the broker refuses them: %s (0x%02X); telemetry still goes, "
                "the platform lacks the records (check the ACL for <root>/cover/#)",
                err.reason,
                err.code,
            )
