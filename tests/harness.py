"""Real parts for end-to-end tests: a Mosquitto the test owns, a validating subscriber."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aiomqtt
from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from firmware_sim.broker import Broker, free_port
from gateway.wire import decode_batch

__all__ = ["Broker", "Collector", "free_port", "free_udp_port", "to_toml"]

SCHEMAS = Path(__file__).resolve().parent.parent / "gateway" / "schemas"


def _validators() -> dict[str, Draft202012Validator]:
    schemas = {p.name: json.loads(p.read_text()) for p in SCHEMAS.glob("*.schema.json")}
    registry: Registry[Any] = Registry().with_resources(
        (s["$id"], Resource.from_contents(s)) for s in schemas.values()
    )
    return {
        name.removesuffix(".schema.json"): Draft202012Validator(schema, registry=registry)
        for name, schema in schemas.items()
        if name != "common.schema.json"
    }


VALIDATORS = _validators()


@dataclass
class Received:
    topic: str
    payload: dict[str, Any]
    retained: bool
    at: float  # monotonic arrival


@dataclass
class Collector:
    """Subscribes to ``covers/#`` with a persistent session; validates everything it gets."""

    port: int
    messages: list[Received] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Retained cover records (compact encodings) by cover id, as the platform holds them;
    # None once cleared (an empty retained payload: the cover left the registry).
    records: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)
    client_id: str = field(default_factory=lambda: f"test-collector-{free_port()}")
    tls_context: ssl.SSLContext | None = None

    async def __aenter__(self) -> Collector:
        connected = asyncio.Event()
        self._task = asyncio.create_task(self._run(connected))
        await asyncio.wait_for(connected.wait(), 10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self, connected: asyncio.Event) -> None:
        client = aiomqtt.Client(
            "127.0.0.1",
            self.port,
            identifier=self.client_id,
            clean_session=False,
            protocol=aiomqtt.ProtocolVersion.V311,
            tls_context=self.tls_context,
        )
        while True:
            try:
                async with client:
                    await client.subscribe("covers/#", qos=1)
                    connected.set()
                    async for message in client.messages:
                        self._take(message)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    def _take(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        kind = topic.rsplit("/", 1)[-1]
        if kind == "cmd":
            return  # requests are the test's own, some invalid on purpose
        assert isinstance(message.payload, bytes)
        levels = topic.split("/")
        if len(levels) > 2 and levels[2] == "cover":
            self._take_record(topic, levels, message)
            return
        # Telemetry in any encoding is validated as the JSON it decodes to.
        if kind == "telemetry":
            payload = decode_batch(message.payload)
        else:
            payload = json.loads(message.payload)
        validator = VALIDATORS.get(kind)
        if validator is None:
            self.errors.append(f"unexpected topic {topic}")
        else:
            for error in validator.iter_errors(payload):
                self.errors.append(f"{topic}: {error.message} at {list(error.absolute_path)}")
        self.messages.append(Received(topic, payload, bool(message.retain), time.monotonic()))
        self._arrived.set()

    def _take_record(self, topic: str, levels: list[str], message: aiomqtt.Message) -> None:
        assert isinstance(message.payload, bytes)
        if len(levels) != 4:
            self.errors.append(f"{topic}: a cover id must be one topic level")
            return
        cover_id = unquote(levels[3])
        record = json.loads(message.payload) if message.payload else None
        if record is not None:
            for error in VALIDATORS["cover"].iter_errors(record):
                self.errors.append(f"{topic}: {error.message} at {list(error.absolute_path)}")
            if record.get("cover_id") != cover_id:
                self.errors.append(f"{topic}: names {record.get('cover_id')!r}")
        self.records[cover_id] = record
        self.messages.append(Received(topic, record or {}, bool(message.retain), time.monotonic()))
        self._arrived.set()

    # --- views ---

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m.payload for m in self.messages if m.topic.endswith(f"/{kind}")]

    def alarms(self) -> list[dict[str, Any]]:
        """Alarm messages, de-duplicated by msg_id as the platform does."""
        seen: dict[str, dict[str, Any]] = {}
        for a in self.of("alarm"):
            seen.setdefault(a["msg_id"], a)
        return list(seen.values())

    def readings(self) -> list[dict[str, Any]]:
        """Readings de-duplicated by reading_id, each joined to its cover's record.

        The record comes from the batch (``json``) or from the retained cover
        topics (the compact encodings). The join gives tests the platform's
        view (``registered``, ``cover``) whatever the wire carried, so they need
        not know the batch layout.
        """
        seen: dict[str, dict[str, Any]] = {}
        for batch in self.of("telemetry"):
            covers = batch.get("covers", self.records)
            for reading in batch["readings"]:
                cover_id = reading.get("cover_id")
                view = {
                    **reading,
                    "registered": cover_id is not None,
                    "cover": covers.get(cover_id) if cover_id is not None else None,
                }
                seen.setdefault(reading["reading_id"], view)
        return list(seen.values())

    def alarm_summary(self) -> list[tuple[str | None, str, str | None, str]]:
        return [
            (
                (a["cover"] or {}).get("cover_id") or a["source"].get("node"),
                a["kind"],
                a["sub"],
                a["state"],
            )
            for a in self.alarms()
        ]

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._arrived.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), 0.2)


def spawn_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    """``covergw run`` as a process (as systemd starts it), its log appended to ``log``."""
    argv = [sys.executable, "-m", "gateway.cli", "--log-level", "INFO", "run", "--config"]
    return subprocess.Popen([*argv, str(config)], stdout=subprocess.DEVNULL, stderr=log.open("ab"))


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def to_toml(data: dict[str, Any]) -> str:
    """Enough TOML for gateway configs: scalars, lists, tables, arrays of tables."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(v)

    lines: list[str] = []

    def table(prefix: str, d: dict[str, Any]) -> None:
        scalars = {k: v for k, v in d.items() if not isinstance(v, dict) and not _is_tables(v)}
        for k, v in scalars.items():
            lines.append(f"{k} = {value(v)}")
        for k, v in d.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                lines.append(f"\n[{name}]")
                table(name, v)
            elif _is_tables(v):
                for item in v:
                    lines.append(f"\n[[{name}]]")
                    table(name, item)

    table("", data)
    return "\n".join(lines) + "\n"


def _is_tables(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


def one_bus(*slaves: dict[str, Any], name: str = "bus") -> list[dict[str, Any]]:
    """A scenario's ``buses`` table: one RS-485 bus with SLAVES (simulator models)."""
    return [{"name": name, "slaves": list(slaves)}]
