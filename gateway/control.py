"""The daemon's local control socket: one JSON request line in, one JSON reply line out.

Only for people on the box (``covergw status``); the socket lives in the
state directory and is as private as it is. Requests: ``{"cmd": "status"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST = 4096


class ControlServer:
    def __init__(self, path: Path, handlers: dict[str, Callable[[], dict[str, Any]]]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> ControlServer:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a killed daemon
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))
        self.path.chmod(0o660)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            reply = self._answer(line[:MAX_REQUEST])
            writer.write(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError) as err:
            log.debug("control client went away: %s", err)
        finally:
            writer.close()

    def _answer(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
            cmd = request.get("cmd") if isinstance(request, dict) else None
            handler = self.handlers.get(cmd) if isinstance(cmd, str) else None
        except (json.JSONDecodeError, UnicodeDecodeError):
            handler = None
        if handler is None:
            return {"ok": False, "error": f"unknown request; have {sorted(self.handlers)}"}
        return {"ok": True, **handler()}


async def request(path: Path, cmd: str, *, timeout_s: float = 5.0) -> dict[str, Any]:
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout_s)
    try:
        writer.write(json.dumps({"cmd": cmd}).encode() + b"\n")
        await writer.drain()
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), timeout_s))
        return reply
    finally:
        writer.close()
