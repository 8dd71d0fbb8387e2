"""The daemon's local control socket, for people on the box.

One JSON request line in; then either one JSON reply line (``status``) or a
stream of text lines until the client hangs up (``tail``). The socket lives
in the state directory and is as private as it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MAX_REQUEST = 4096


Stream = Callable[[dict[str, Any]], AsyncIterator[str]]


class ControlServer:
    def __init__(
        self,
        path: Path,
        handlers: dict[str, Callable[[], dict[str, Any]]],
        streams: dict[str, Stream] | None = None,
    ) -> None:
        self.path = path
        self.handlers = handlers
        self.streams = streams or {}
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
            request = _parse(line[:MAX_REQUEST])
            stream = self.streams.get(str(request.get("cmd"))) if request else None
            if stream is not None:
                await self._stream(stream(request or {}), reader, writer)
                return
            reply = self._answer(request)
            writer.write(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
            await writer.drain()
        except (TimeoutError, ConnectionError) as err:
            log.debug("control client went away: %s", err)
        finally:
            writer.close()

    @staticmethod
    async def _stream(
        lines: AsyncIterator[str], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Write lines until the client hangs up (EOF), even while nothing is being heard."""

        async def pump() -> None:
            async for text in lines:
                writer.write(text.encode("utf-8", "replace") + b"\n")
                await writer.drain()

        pumping = asyncio.ensure_future(pump())
        hangup = asyncio.ensure_future(reader.read())
        try:
            await asyncio.wait({pumping, hangup}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pumping.cancel()
            hangup.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await pumping

    def _answer(self, request: dict[str, Any] | None) -> dict[str, Any]:
        cmd = request.get("cmd") if request else None
        handler = self.handlers.get(cmd) if isinstance(cmd, str) else None
        if handler is None:
            known = sorted([*self.handlers, *self.streams])
            return {"ok": False, "error": f"unknown request; have {known}"}
        return {"ok": True, **handler()}


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        request = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return request if isinstance(request, dict) else None


async def follow(path: Path, request: dict[str, Any]) -> AsyncIterator[str]:
    """Lines of a streaming request, until the daemon goes away."""
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 5)
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        while line := await reader.readline():
            yield line.decode("utf-8", "replace").rstrip("\n")
    finally:
        writer.close()


async def request(path: Path, cmd: str, *, timeout_s: float = 5.0) -> dict[str, Any]:
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout_s)
    try:
        writer.write(json.dumps({"cmd": cmd}).encode() + b"\n")
        await writer.drain()
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), timeout_s))
        return reply
    finally:
        writer.close()
