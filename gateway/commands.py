"""Commands from the platform: bounded, validated, carried out once, always answered.

Anyone who can publish on ``covers/<gw>/cmd`` reaches this code, so a request
is hostile until checked: it is rate limited and its size and nesting are
bounded before it is parsed; it is checked against ``schemas/command.schema.json``
(the file the platform team reads, which states every range) and then against
the gateway's state. Nothing changes unless the whole request is valid, and
whatever a handler does, the request gets an answer and the next one is served.

A request that was carried out is remembered by ``request_id`` in the durable
queue's state rows, so a repeat (even after a restart) gets the first answer
and is not carried out twice; the same id with another command is a
``conflict``. Changes to thresholds and maintenance are audited (a log line
with old and new values and an ``event`` upstream) and shown as the retained
``overrides`` topic.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import math
import re
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from gateway import digests
from gateway.buffer.queue import Lane, Outgoing, QueueError
from gateway.config import CommandsConfig
from gateway.edge.alarm import SEVERITY, AlarmKind
from gateway.edge.engine import EdgeEngine, iso
from gateway.errors import GatewayError
from gateway.ratelimit import TokenBucket

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator

log = logging.getLogger(__name__)
audit = logging.getLogger("gateway.audit")

REQUEST_KEY = "cmd.req."  # state rows: request_id → digest and first answer
ACK_KEY = "cmd.ack."  # state rows: alarm_id → who acknowledged it
READ_ONLY = frozenset({"ping", "status", "active_alarms", "frames"})  # safe to carry out again
CLOCK_SKEW_S = 300.0  # a sent_at further ahead than this is refused: it would never expire
MESSAGE_MAX = 300  # characters of an error message: a reason, never an echo of the request
_RECOVER_SCAN = 4096  # bytes searched for a request_id in a request that is not JSON
_SECRET_KEY = re.compile(
    r"([\w.\[\]-]*(?:password|passwd|secret|token|psk|key_file)[\w.\[\]-]*)\s*:.*"
)
# Up to 12 bytes per character in JSON (a surrogate pair of \uXXXX escapes) for 128 characters.
_REQUEST_ID = re.compile(rb'"request_id"\s*:\s*("(?:[^"\\]|\\.){1,1536}")')
_JSON_TOKENS = re.compile(rb'\\.|["\[\]{}]', re.DOTALL)


class ErrorCode(StrEnum):
    """What went wrong, for a machine: docs/mqtt-api.md gives each its meaning."""

    INVALID = "invalid"
    NOT_FOUND = "not_found"
    REFUSED = "refused"
    EXPIRED = "expired"
    CONFLICT = "conflict"
    BUSY = "busy"
    INTERNAL = "internal"


class CommandError(GatewayError):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Delivery:
    """What the transport says about a request besides its bytes."""

    expires_at: float | None = None  # MQTT 5 Message Expiry, as wall time at receipt
    foreign_reply_topic: str | None = None  # a Response Topic outside the gateway's root


@dataclass(frozen=True)
class Answer:
    """An answer, and whether the request was unreadable (then it goes to the default topic)."""

    payload: bytes
    unreadable: bool = False


@dataclass
class CommandStats:
    received: int = 0
    carried_out: int = 0
    repeated: int = 0
    busy: int = 0
    dropped: int = 0
    invalid: int = 0
    not_found: int = 0
    refused: int = 0
    expired: int = 0
    conflict: int = 0
    internal: int = 0


class Store(Protocol):
    """The durable queue's part the handler uses: messages and state rows in one commit."""

    def put_many(
        self, messages: Iterable[Outgoing], *, state: Mapping[str, str | None] | None = None
    ) -> int: ...
    def state_items(self, prefix: str) -> Iterator[tuple[str, str]]: ...


class Host(Protocol):
    """What the handler needs of the running gateway."""

    engine: EdgeEngine

    def local_status(self) -> dict[str, Any]: ...
    def reload_now(self) -> dict[str, Any]: ...
    def device_downlink(
        self, args: dict[str, Any], *, request_id: str | None
    ) -> dict[str, Any]: ...


@dataclass
class _Outcome:
    """What carrying out a command produced besides its result."""

    events: list[Outgoing] = field(default_factory=list)
    state: dict[str, str | None] = field(default_factory=dict)
    overrides_changed: bool = False


def _schemas() -> dict[str, Any]:
    from importlib import resources  # noqa: PLC0415 - at the first command, see CommandHandler

    folder = resources.files("gateway") / "schemas"
    return {
        name: json.loads((folder / name).read_text(encoding="utf-8"))
        for name in ("common.schema.json", "command.schema.json")
    }


def _validator(schemas: dict[str, Any]) -> Draft202012Validator:
    """Compiled at the first command: jsonschema is most of what the handler would cost
    a gateway that is never sent one."""
    from jsonschema import Draft202012Validator  # noqa: PLC0415
    from referencing import Registry, Resource  # noqa: PLC0415

    registry: Registry[Any] = Registry().with_resources(
        (s["$id"], Resource.from_contents(s)) for s in schemas.values()
    )
    return Draft202012Validator(schemas["command.schema.json"], registry=registry)


def too_deep(payload: bytes, limit: int) -> bool:
    """Nesting past ``limit``, found without parsing (brackets inside strings do not count)."""
    depth = 0
    in_string = False
    for match in _JSON_TOKENS.finditer(payload):
        token = match.group()
        if in_string:
            in_string = token != b'"'
        elif token == b'"':
            in_string = True
        elif token in {b"[", b"{"}:
            depth += 1
            if depth > limit:
                return True
        elif token in {b"]", b"}"}:
            depth -= 1
    return False


def recover_request_id(payload: bytes) -> str | None:
    """The request_id of a request we could not parse, where its first bytes still show it."""
    match = _REQUEST_ID.search(payload[:_RECOVER_SCAN])
    if match is None:
        return None
    try:
        value = json.loads(match.group(1))
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, str) and 0 < len(value) <= 128 else None


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not a number this gateway accepts")


def _parse_time(value: str, where: str) -> float:
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError as err:
        raise CommandError(ErrorCode.INVALID, f"{where}: not a valid time ({err})") from err


def _digest(request: dict[str, Any]) -> str:
    """What makes two requests the same command: cmd and args, not timestamps."""
    canonical = json.dumps(
        {"cmd": request.get("cmd"), "args": request.get("args", {})},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return digests.sha256(canonical.encode()).hexdigest()[:32]


class CommandHandler:
    def __init__(
        self,
        host: Host,
        *,
        gateway_id: str,
        clock: Callable[[], float],
        limits: CommandsConfig | None = None,
        store: Store | None = None,
        secrets: Callable[[], Iterable[str]] = tuple,
        monotonic: Callable[[], float] = time.monotonic,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self.host = host
        self.gateway_id = gateway_id
        self.topic_root = f"covers/{gateway_id}"
        self.clock = clock
        self.limits = limits or CommandsConfig()
        self.store = store
        self.stats = CommandStats()
        self.changed = asyncio.Event()  # overrides changed: the uplink republishes them
        self._secrets = secrets
        self._new_id = new_id
        # Read at the first command (or saved overrides to check): ~0.3 MiB an idle
        # gateway that is never sent one would carry for nothing.
        self._schemas: dict[str, Any] | None = None
        self._ranges: dict[str, Any] | None = None
        self._compiled: Draft202012Validator | None = None
        self._bucket = TokenBucket(self.limits.rate_per_s, self.limits.burst, monotonic)
        # Busy answers cost a publish each: past this second bucket a flood is dropped unanswered.
        self._busy_bucket = TokenBucket(self.limits.rate_per_s, self.limits.burst, monotonic)
        self._answers: OrderedDict[str, tuple[str, bytes]] = OrderedDict()
        self._acks: dict[str, dict[str, Any]] = {}
        self._stale: dict[str, str | None] = {}  # state rows to delete with the next commit

    # --- state that survives a restart ---

    def restore(self) -> None:
        """Read remembered requests and acknowledgements back; drop what no longer holds."""
        if self.store is None:
            return
        remembered: list[tuple[float, str, str, bytes]] = []
        for key, value in self.store.state_items(REQUEST_KEY):
            try:
                row = json.loads(value)
                remembered.append(
                    (float(row["at"]), key[len(REQUEST_KEY) :], str(row["digest"]), row["answer"])
                )
            except (ValueError, KeyError, TypeError):
                self._stale[key] = None
        remembered.sort()
        keep = max(0, len(remembered) - self.limits.remember_requests)
        for _, request_id, _, _ in remembered[:keep]:
            self._stale[REQUEST_KEY + request_id] = None
        for _, request_id, digest, answer in remembered[keep:]:
            self._answers[request_id] = (digest, str(answer).encode())
        for key, value in self.store.state_items(ACK_KEY):
            try:
                self._acks[key[len(ACK_KEY) :]] = dict(json.loads(value))
            except (ValueError, TypeError):
                self._stale[key] = None
        self._sanitise_overrides()
        self._prune_acks()
        self._commit([], {})
        log.info(
            "commands: %d request ids remembered, %d acknowledged alarms",
            len(self._answers),
            len(self._acks),
        )

    def _sanitise_overrides(self) -> None:
        """Overrides saved before ranges were enforced (NaN, 1e9, forever) are cut back."""
        engine = self.host.engine
        for overrides, is_cover in ((engine.cover_overrides, True), (engine.kind_overrides, False)):
            for name, values in list(overrides.items()):
                bad = [k for k, v in values.items() if not self._in_range(k, v)]
                if bad:
                    log.warning("dropping saved overrides of %s out of range: %s", name, bad)
                    engine.clear_thresholds(
                        cover_id=name if is_cover else None,
                        cover_kind=None if is_cover else name,
                        keys=bad,
                    )
        latest = self.clock() + self.limits.maintenance_max_s
        for cover_id, until in list(engine.maintenance_until.items()):
            if not math.isfinite(until) or until > latest:
                log.warning("maintenance of %s cut to the maximum window", cover_id)
                engine.set_maintenance(cover_id, latest)

    def _in_range(self, key: str, value: Any) -> bool:
        spec = self._threshold_ranges().get(key)
        if spec is None or isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return math.isfinite(value) and spec["minimum"] <= value <= spec["maximum"]

    # --- one request ---

    def handle(self, payload: bytes, delivery: Delivery | None = None) -> bytes | None:
        """One request in, one JSON answer out (None: dropped under a flood); never raises."""
        answer = self.answer(payload, delivery)
        return None if answer is None else answer.payload

    def answer(self, payload: bytes, delivery: Delivery | None = None) -> Answer | None:
        """As ``handle``, saying also whether the request could be read at all."""
        self.stats.received += 1
        if not self._bucket.take():
            if not self._busy_bucket.take():
                self.stats.dropped += 1
                return None
            error = CommandError(ErrorCode.BUSY, "over the command rate limit; send it again later")
            return Answer(self._refuse(recover_request_id(payload), None, error))
        try:
            return self._handle(payload, delivery or Delivery())
        except Exception:  # every request is answered, whatever went wrong
            log.exception("command handling failed (request %r)", recover_request_id(payload))
            error = CommandError(ErrorCode.INTERNAL, "the gateway failed handling this request")
            return Answer(self._refuse(recover_request_id(payload), None, error))

    def _handle(self, payload: bytes, delivery: Delivery) -> Answer:
        limits = self.limits
        if len(payload) > limits.max_payload_bytes:
            error = CommandError(
                ErrorCode.INVALID,
                f"request is {len(payload)} bytes; the limit is {limits.max_payload_bytes}",
            )
            return Answer(self._refuse(recover_request_id(payload), None, error), unreadable=True)
        if too_deep(payload, limits.max_depth):
            error = CommandError(
                ErrorCode.INVALID, f"request nests deeper than {limits.max_depth} levels"
            )
            return Answer(self._refuse(recover_request_id(payload), None, error), unreadable=True)
        try:
            request = json.loads(payload, parse_constant=_no_constants)
        except (ValueError, UnicodeDecodeError) as err:
            error = CommandError(ErrorCode.INVALID, f"not JSON: {err}")
            return Answer(self._refuse(recover_request_id(payload), None, error), unreadable=True)
        if not isinstance(request, dict):
            error = CommandError(ErrorCode.INVALID, "a request is a JSON object")
            return Answer(self._refuse(None, None, error), unreadable=True)
        request_id, cmd = request.get("request_id"), request.get("cmd")
        if delivery.foreign_reply_topic is not None:
            error = CommandError(
                ErrorCode.REFUSED,
                f"response topic outside {self.topic_root}/; answers go only there",
            )
            return Answer(self._refuse(request_id, cmd, error))
        errors = list(itertools.islice(self._validator().iter_errors(request), 20))
        if errors:
            first = min(errors, key=lambda e: len(list(e.absolute_path)))
            where = "/".join(str(p) for p in first.absolute_path) or "(request)"
            error = CommandError(ErrorCode.INVALID, f"{where}: {first.message}")
            return Answer(self._refuse(request_id, cmd, error))
        request_id, cmd = str(request_id), str(cmd)  # the schema requires both as strings
        digest = _digest(request)
        seen = self._answers.get(request_id)
        if seen is not None:
            if seen[0] != digest:
                error = CommandError(
                    ErrorCode.CONFLICT, f"request_id {request_id!r} was used for another command"
                )
                return Answer(self._refuse(request_id, cmd, error))
            self.stats.repeated += 1
            if seen[1]:  # a read-only command is answered afresh
                return Answer(seen[1])
        try:
            self._check_expiry(request, delivery)
            outcome = _Outcome()
            result = self._carry_out(cmd, request.get("args", {}), request_id, outcome)
        except CommandError as err:
            return Answer(self._refuse(request_id, cmd, err))
        answer = self._answer(request_id, cmd, result=result)
        self.stats.carried_out += 1
        log.info("command %s (%s) done", cmd, request_id)
        kept = b"" if cmd in READ_ONLY else answer  # a status answer is big and soon stale
        self._remember(request_id, digest, kept, outcome.state)
        self._commit(outcome.events, outcome.state)
        if outcome.overrides_changed:
            self.changed.set()
        return Answer(answer)

    def _validator(self) -> Draft202012Validator:
        if self._compiled is None:
            self._compiled = _validator(self._schema_documents())
        return self._compiled

    def _schema_documents(self) -> dict[str, Any]:
        if self._schemas is None:
            self._schemas = _schemas()
        return self._schemas

    def _threshold_ranges(self) -> dict[str, Any]:
        """Each threshold's minimum and maximum, as the command schema states them."""
        if self._ranges is None:
            command = self._schema_documents()["command.schema.json"]
            self._ranges = command["$defs"]["thresholds"]["properties"]
        return self._ranges

    def _check_expiry(self, request: dict[str, Any], delivery: Delivery) -> None:
        deadlines: list[float] = []
        if "sent_at" in request:
            sent = _parse_time(request["sent_at"], "sent_at")
            if sent > self.clock() + CLOCK_SKEW_S:
                raise CommandError(
                    ErrorCode.REFUSED, "sent_at is in the future: check the platform's clock"
                )
        if "expires_at" in request:
            deadlines.append(_parse_time(request["expires_at"], "expires_at"))
        elif "sent_at" in request:
            deadlines.append(_parse_time(request["sent_at"], "sent_at") + self.limits.lifetime_s)
        if delivery.expires_at is not None:
            deadlines.append(delivery.expires_at)
        if deadlines and min(deadlines) < self.clock():
            raise CommandError(
                ErrorCode.EXPIRED, f"expired at {iso(min(deadlines))}; not carried out"
            )

    def _remember(
        self, request_id: str, digest: str, answer: bytes, state: dict[str, str | None]
    ) -> None:
        if self.limits.remember_requests == 0:
            return
        self._answers[request_id] = (digest, answer)
        row = {"at": self.clock(), "digest": digest, "answer": answer.decode()}
        state[REQUEST_KEY + request_id] = json.dumps(row, ensure_ascii=False)
        while len(self._answers) > self.limits.remember_requests:
            old, _ = self._answers.popitem(last=False)
            state[REQUEST_KEY + old] = None

    def _commit(self, events: list[Outgoing], state: dict[str, str | None]) -> None:
        """Audit events and state rows in one commit; a failing disk loses them, not the command."""
        state = {**self._stale, **state}
        if self.store is None or (not events and not state):
            return
        try:
            self.store.put_many(events, state=state)
        except QueueError as err:
            log.error("command state not saved: %s", err)  # noqa: TRY400 - the reason is enough
            return
        self._stale.clear()

    # --- answers ---

    def _refuse(self, request_id: Any, cmd: Any, error: CommandError) -> bytes:
        counter = error.code.value
        setattr(self.stats, counter, getattr(self.stats, counter) + 1)
        return self._answer(request_id, cmd, error=error)

    def _answer(
        self,
        request_id: Any,
        cmd: Any,
        *,
        result: dict[str, Any] | None = None,
        error: CommandError | None = None,
    ) -> bytes:
        body: dict[str, Any] = {
            "request_id": request_id if isinstance(request_id, str) else None,
            "cmd": cmd if isinstance(cmd, str) else None,
            "ok": error is None,
            "gateway": self.gateway_id,
            "time": iso(self.clock()),
        }
        if error is None:
            body["result"] = result or {}
        else:
            message = self.redact(error.message)
            body["error"] = {"code": error.code.value, "message": message}
            log.warning(
                "command %.40r (%.40r) answered %s: %s", cmd, request_id, error.code, message
            )
        return json.dumps(body, ensure_ascii=False, allow_nan=False).encode("utf-8")

    def redact(self, text: str) -> str:
        """No secret in an answer: a secret key's value is withheld, known secrets masked."""
        return self.mask(_SECRET_KEY.sub(r"\1: refused (value withheld)", text))

    def mask(self, text: str) -> str:
        """Known secret values masked, the length capped (for text that names no value).

        A reload's refusal comes from the config layer, which never puts a secret
        key's value in an error; its reason stays readable ("must be a string").
        """
        for secret in self._secrets():
            if secret:
                text = text.replace(secret, "***")
        if len(text) > MESSAGE_MAX:
            text = text[: MESSAGE_MAX - 1] + "…"
        return text

    # --- what the platform and the status see ---

    def overrides(self) -> dict[str, Any]:
        engine = self.host.engine
        now = self.clock()
        return {
            "cover": {k: dict(v) for k, v in engine.cover_overrides.items() if v},
            "cover_kind": {k: dict(v) for k, v in engine.kind_overrides.items() if v},
            "maintenance": {
                k: iso(until)
                for k, until in engine.maintenance_until.items()
                if math.isfinite(until) and until > now
            },
        }

    def overrides_message(self) -> bytes:
        """The retained ``covers/<gw>/overrides`` payload."""
        body = {
            "gateway": self.gateway_id,
            "time": iso(self.clock()),
            "overrides": self.overrides(),
        }
        return json.dumps(body, ensure_ascii=False).encode("utf-8")

    def stats_payload(self) -> dict[str, Any]:
        return {**asdict(self.stats), "overrides": self.overrides()}

    def alarms(self) -> list[dict[str, Any]]:
        """Every active alarm with its acknowledgement (or null)."""
        self._prune_acks()
        return [
            {**a, "acknowledged": self._acks.get(str(a["alarm_id"]))}
            for a in self.host.engine.active_alarms()
        ]

    def alarm_views(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(not yet acknowledged, acknowledged): the console and status repeat only the first."""
        every = self.alarms()
        return (
            [a for a in every if a["acknowledged"] is None],
            [a for a in every if a["acknowledged"] is not None],
        )

    def _prune_acks(self) -> None:
        """An acknowledgement lives as long as its alarm: gone once it clears."""
        active = {str(a["alarm_id"]) for a in self.host.engine.active_alarms()}
        for alarm_id in [a for a in self._acks if a not in active]:
            del self._acks[alarm_id]
            self._stale[ACK_KEY + alarm_id] = None

    # --- carrying out ---

    def _cover(self, cover_id: str) -> None:
        if cover_id not in self.host.engine.registry.covers:
            raise CommandError(ErrorCode.NOT_FOUND, f"no cover {cover_id!r} in the registry")

    def _carry_out(
        self, cmd: str, args: dict[str, Any], request_id: str, outcome: _Outcome
    ) -> dict[str, Any]:
        engine = self.host.engine
        match cmd:
            case "ping":
                return {"pong": True}
            case "status":
                return self.host.local_status()
            case "active_alarms":
                alarms = self.alarms()
                return {"alarms": alarms, "count": len(alarms)}
            case "set_thresholds":
                return self._set_thresholds(args, request_id, outcome)
            case "clear_thresholds":
                return self._clear_thresholds(args, request_id, outcome)
            case "maintenance":
                return self._maintenance(args, request_id, outcome)
            case "rezero":
                self._cover(args["cover_id"])
                engine.rezero(args["cover_id"])
                return {"cover_id": args["cover_id"], "baseline": "the next normal reading"}
            case "reload":
                return self._reload()
            case "frames":
                node = int(args["node"], 16)
                last = int(args.get("last", 10))
                return {"node": args["node"], "frames": engine.recent_frames(node, last)}
            case "ack_alarm":
                return self._ack_alarm(args, request_id, outcome)
            case "device_downlink":
                from gateway.drivers.lorawan import DownlinkError  # noqa: PLC0415 - used rarely

                try:
                    return self.host.device_downlink(args, request_id=request_id)
                except DownlinkError as err:
                    raise CommandError(ErrorCode(err.code), err.message) from err
        raise CommandError(ErrorCode.INVALID, f"unknown command {cmd!r}")  # pragma: no cover

    def _target(self, args: dict[str, Any]) -> tuple[str | None, str | None, dict[str, Any]]:
        engine = self.host.engine
        cover_id, kind = args.get("cover_id"), args.get("cover_kind")
        overrides = engine.cover_overrides if cover_id else engine.kind_overrides
        return cover_id, kind, overrides

    def _kind_exists(self, kind: str) -> None:
        if not any(c.cover_kind == kind for c in self.host.engine.registry.covers.values()):
            raise CommandError(ErrorCode.NOT_FOUND, f"no cover of kind {kind!r} in the registry")

    def _set_thresholds(
        self, args: dict[str, Any], request_id: str, outcome: _Outcome
    ) -> dict[str, Any]:
        engine = self.host.engine
        cover_id, kind, overrides = self._target(args)
        if cover_id:
            self._cover(cover_id)
            sample = engine.registry.covers[cover_id]
        else:
            assert kind is not None  # the schema: exactly one of the two
            self._kind_exists(kind)
            sample = next(c for c in engine.registry.covers.values() if c.cover_kind == kind)
        values: dict[str, Any] = args["thresholds"]
        after = engine.thresholds(sample).merged(values)
        if after.low_battery_clear_mv < after.low_battery_mv:
            raise CommandError(
                ErrorCode.REFUSED, "low_battery_clear_mv would be below low_battery_mv"
            )
        if after.water_overflow_mm > after.water_high_mm:
            raise CommandError(ErrorCode.REFUSED, "water_overflow_mm would be above water_high_mm")
        if after.tilt_clear_margin_deg >= after.tilt_deg:
            raise CommandError(
                ErrorCode.REFUSED, "tilt_clear_margin_deg would not be below tilt_deg"
            )
        key = cover_id or kind or ""
        before = dict(overrides.get(key, {}))
        engine.set_thresholds(cover_id=cover_id, cover_kind=kind, values=values)
        now = dict(overrides.get(key, {}))
        self._audit("thresholds_set", request_id, cover_id, kind, before, now, outcome)
        return {
            "cover_id": cover_id,
            "cover_kind": kind,
            "applied": values,
            "previous": before,
            "now": now,
        }

    def _clear_thresholds(
        self, args: dict[str, Any], request_id: str, outcome: _Outcome
    ) -> dict[str, Any]:
        engine = self.host.engine
        cover_id, kind, overrides = self._target(args)
        key = cover_id or kind or ""
        if key not in overrides:  # a cover gone from the registry can still be cleared
            if cover_id:
                self._cover(cover_id)
            else:
                self._kind_exists(str(kind))
        before = dict(overrides.get(key, {}))
        keys = args.get("keys")
        cleared = engine.clear_thresholds(cover_id=cover_id, cover_kind=kind, keys=keys)
        now = dict(overrides.get(key, {}))
        if cleared:
            self._audit("thresholds_cleared", request_id, cover_id, kind, before, now, outcome)
        return {
            "cover_id": cover_id,
            "cover_kind": kind,
            "cleared": sorted(cleared),
            "previous": before,
            "now": now,
        }

    def _maintenance(
        self, args: dict[str, Any], request_id: str, outcome: _Outcome
    ) -> dict[str, Any]:
        engine = self.host.engine
        cover_id = args["cover_id"]
        self._cover(cover_id)
        now = self.clock()
        latest = now + self.limits.maintenance_max_s
        until = None
        if args["on"]:
            until = _parse_time(args["until"], "args/until") if "until" in args else latest
            if until <= now:
                raise CommandError(ErrorCode.REFUSED, "until is in the past")
            if until > latest:
                raise CommandError(
                    ErrorCode.REFUSED,
                    f"until is more than {self.limits.maintenance_max_s:.0f} s ahead "
                    "(commands.maintenance_max_s)",
                )
        previous = engine.maintenance_until.get(cover_id)
        engine.set_maintenance(cover_id, until)
        shown_before = iso(previous) if previous and math.isfinite(previous) else None
        event = "maintenance_set" if until is not None else "maintenance_ended"
        self._audit(
            event,
            request_id,
            cover_id,
            None,
            {"until": shown_before},
            {"until": iso(until) if until is not None else None},
            outcome,
        )
        return {
            "cover_id": cover_id,
            "maintenance": args["on"],
            "until": iso(until) if until is not None else None,
        }

    def _reload(self) -> dict[str, Any]:
        try:
            outcome = self.host.reload_now()
        except (GatewayError, OSError, UnicodeError, ValueError) as err:
            reason = f"{type(err).__name__}: {err}"
            raise CommandError(ErrorCode.REFUSED, f"reload failed: {reason}") from err
        if not outcome.get("ok"):
            raise CommandError(ErrorCode.REFUSED, f"reload refused: {outcome.get('reason')}")
        return {
            "ok": True,
            "at": outcome.get("at") or iso(self.clock()),
            "restart_needed": list(outcome.get("restart_needed", [])),
        }

    def _ack_alarm(
        self, args: dict[str, Any], request_id: str, outcome: _Outcome
    ) -> dict[str, Any]:
        alarm_id = args["alarm_id"]
        self._prune_acks()
        active = {str(a["alarm_id"]): a for a in self.host.engine.active_alarms()}
        alarm = active.get(alarm_id)
        if alarm is None:
            raise CommandError(ErrorCode.NOT_FOUND, f"no active alarm {alarm_id!r}")
        if alarm_id in self._acks:
            by = self._acks[alarm_id]["by"]
            raise CommandError(ErrorCode.REFUSED, f"already acknowledged by {by!r}")
        now = self.clock()
        ack = {"by": args["by"], "work_order": args.get("work_order"), "at": iso(now)}
        self._acks[alarm_id] = ack
        outcome.state[ACK_KEY + alarm_id] = json.dumps(ack, ensure_ascii=False)
        cover = self.host.engine.registry.covers.get(alarm["subject"])
        msg_id = self._new_id()
        message = {
            "msg_id": msg_id,
            "alarm_id": alarm_id,
            "gateway": self.gateway_id,
            "kind": alarm["kind"],
            "sub": alarm["sub"],
            "state": "acknowledged",
            "severity": SEVERITY[AlarmKind(alarm["kind"])],
            "time": iso(now),
            "raised_at": alarm["raised_at"],
            "registered": cover is not None,
            "cover": cover.identity() if cover else None,
            "acknowledged_by": ack["by"],
            "work_order": ack["work_order"],
            "request_id": request_id,
        }
        payload = json.dumps(message, ensure_ascii=False, separators=(",", ":")).encode()
        outcome.events.append(Outgoing(msg_id, Lane.ALARM, f"{self.topic_root}/alarm", payload))
        audit.info(
            "alarm %s (%s %s) acknowledged by %r, work order %r (request %s)",
            alarm_id,
            alarm["kind"],
            alarm["subject"],
            ack["by"],
            ack["work_order"],
            request_id,
        )
        return {"alarm": {**alarm, "acknowledged": ack}, "acknowledged": ack}

    def _audit(  # noqa: PLR0917 - private; one audit record's fields
        self,
        event: str,
        request_id: str,
        cover_id: str | None,
        kind: str | None,
        old: dict[str, Any],
        new: dict[str, Any],
        outcome: _Outcome,
    ) -> None:
        target = f"cover {cover_id}" if cover_id else f"cover kind {kind}"
        audit.info("%s for %s by request %s: %s -> %s", event, target, request_id, old, new)
        msg_id = self._new_id()
        body = {
            "msg_id": msg_id,
            "gateway": self.gateway_id,
            "time": iso(self.clock()),
            "event": event,
            "request_id": request_id,
            "target": {"cover_id": cover_id, "cover_kind": kind},
            "old": old,
            "new": new,
        }
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        outcome.events.append(Outgoing(msg_id, Lane.ALARM, f"{self.topic_root}/event", payload))
        outcome.overrides_changed = True
