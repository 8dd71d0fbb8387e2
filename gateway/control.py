"""The daemon's local control socket, for people on the box.

One JSON request line in; then either one JSON reply line (``status``) or a
stream of text lines until the client hangs up (``tail``). The socket lives
in the state directory and is as private as it is.

Whoever can open the socket is still not trusted to be well-behaved: at most
``max_clients`` connections are served at once (more are closed at once and
counted), a request line is at most ``MAX_REQUEST`` bytes and must arrive
within ``READ_TIMEOUT_S``, and a handler's bug answers an error instead of
ending the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from gateway.errors import TransportError

log = logging.getLogger(__name__)

MAX_REQUEST = 4096  # bytes of one request line; longer is refused
# A reply is one line: the status of a city block (2,000 cover rows) runs to megabytes.
# The tools read up to this much; the daemon is trusted, this only bounds a bug.
MAX_REPLY = 64 * 1024 * 1024
READ_TIMEOUT_S = 5.0  # for the request line; an idle client is then closed
MAX_CLIENTS = 16  # connections served at once (``[gateway] control_max_clients``)


Stream = Callable[[dict[str, Any]], AsyncIterator[str]]


class ControlServer:
    def __init__(
        self,
        path: Path,
        handlers: dict[str, Callable[[], dict[str, Any]]],
        streams: dict[str, Stream] | None = None,
        *,
        max_clients: int = MAX_CLIENTS,
        read_timeout_s: float = READ_TIMEOUT_S,
    ) -> None:
        self.path = path
        self.handlers = handlers
        self.streams = streams or {}
        self.max_clients = max_clients
        self.read_timeout_s = read_timeout_s
        self.clients = 0
        self.refused_connections = 0  # over max_clients: closed at once
        self.bad_requests = 0  # too long, too slow, not JSON
        self.handler_errors = 0  # a bug in a handler, answered with an error
        self._server: asyncio.Server | None = None

    def stats(self) -> dict[str, int]:
        return {
            "clients": self.clients,
            "refused_connections": self.refused_connections,
            "bad_requests": self.bad_requests,
            "handler_errors": self.handler_errors,
        }

    async def start(self) -> None:
        """Take the socket path (before READY: a failure here stops the start)."""
        if self._server is not None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket from a killed daemon
        try:
            self._server = await asyncio.start_unix_server(
                self._serve, path=str(self.path), limit=MAX_REQUEST
            )
            self.path.chmod(0o660)
        except OSError as err:
            raise TransportError(f"control socket {self.path}: {err.strerror or err}") from err

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def serve(self, stop: asyncio.Event) -> None:
        """The supervised part: serve until ``stop``."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.close()

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.clients >= self.max_clients:
            self.refused_connections += 1
            writer.close()
            return
        self.clients += 1
        try:
            await self._session(reader, writer)
        except (TimeoutError, ConnectionError) as err:
            log.debug("control client went away: %s", err)
        except Exception:  # a handler's bug must not end the server or other clients
            self.handler_errors += 1
            log.exception("control request failed")
            with contextlib.suppress(ConnectionError, RuntimeError):
                writer.write(b'{"ok": false, "error": "internal error (see the log)"}\n')
        finally:
            self.clients -= 1
            writer.close()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), self.read_timeout_s)
        except (TimeoutError, ValueError, asyncio.LimitOverrunError):
            self.bad_requests += 1
            return  # too slow, or a line longer than MAX_REQUEST: hang up
        request = _parse(line)
        if request is None:
            self.bad_requests += 1
        stream = self.streams.get(str(request.get("cmd"))) if request else None
        if stream is not None:
            await self._stream(stream(request or {}), reader, writer)
            return
        reply = self._answer(request)
        writer.write(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), self.read_timeout_s)

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
    reader, writer = await asyncio.wait_for(
        asyncio.open_unix_connection(str(path), limit=MAX_REPLY), 5
    )
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        while line := await reader.readline():
            yield line.decode("utf-8", "replace").rstrip("\n")
    finally:
        writer.close()


async def request(path: Path, cmd: str, *, timeout_s: float = 5.0) -> dict[str, Any]:
    reader, writer = await asyncio.wait_for(
        asyncio.open_unix_connection(str(path), limit=MAX_REPLY), timeout_s
    )
    try:
        writer.write(json.dumps({"cmd": cmd}).encode() + b"\n")
        await writer.drain()
        reply: dict[str, Any] = json.loads(await asyncio.wait_for(reader.readline(), timeout_s))
        return reply
    finally:
        writer.close()
