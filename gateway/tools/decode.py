"""``covergw decode``: what a technician runs on a hex dump or a raw capture.

A capture may be a file, a pipe or a live tty (``/dev/pts/N``, a USB
adapter): it is read as bytes arrive, never waiting for a full buffer, a
pause of ``IDLE_GAP_S`` ends a frame as on the serial port, and the end of
the stream (EOF, or EIO when a pty's far side closes) ends the run cleanly.
"""

from __future__ import annotations

import errno
import json
import os
import re
import select
import stat
import sys
import time
from collections.abc import Iterable
from typing import BinaryIO, TextIO

from gateway.errors import HexError, ProtocolError
from gateway.protocol.codec import decode_frame
from gateway.protocol.framing import (
    IDLE_GAP_S,
    AtLineFramer,
    FramerStats,
    Item,
    Received,
    Rejected,
    StreamFramer,
    make_framer,
)
from gateway.protocol.render import item_to_dict

CHUNK = 64 * 1024
AT_LINE = re.compile(rb"\+EVT:RXP2P:|^AT\+", re.MULTILINE)

SPLIT_HINT = (
    "hint: these look like the bytes of one frame split by the shell; quote the frame: "
    "covergw decode '{joined}'"
)
AT_HINT = "hint: the capture holds AT lines (+EVT:RXP2P:…); decode it with --dialect at"


class CaptureError(Exception):
    """A capture that cannot be read at all (missing, unreadable): one line for the user."""


def parse_hex(text: str) -> bytes:
    cleaned = "".join(text.split()).replace(":", "").replace("-", "")
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    try:
        return bytes.fromhex(cleaned)
    except ValueError as err:
        raise HexError(f"not hex: {text[:40]!r}") from err


def decode_hex_args(frames: Iterable[str], out: TextIO, err: TextIO | None = None) -> int:
    """One JSON line per argument; a frame that fails prints its reason, not a traceback."""
    frames = list(frames)
    received = 0
    for text in frames:
        raw = b""
        try:
            raw = parse_hex(text)
            item: Item = Received(decode_frame(raw), raw)
            received += 1
        except ProtocolError as error:
            item = Rejected(error, raw)
        _emit(item, out, input_text=text)
    tiny = all(len("".join(t.split())) <= 2 for t in frames)
    if err is not None and len(frames) > 1 and tiny and not received:
        print(SPLIT_HINT.format(joined=" ".join(frames)), file=err)
    return 0


def decode_capture(
    stream: BinaryIO, out: TextIO, err: TextIO, *, dialect: str, rssi_append: bool
) -> FramerStats:
    """Run the live framer over a capture: the same code path as a serial port."""
    framer = make_framer(dialect, rssi_append=rssi_append)
    at_seen = False
    for chunk in _chunks(stream, framer, out):
        at_seen = at_seen or (dialect != "at" and AT_LINE.search(chunk) is not None)
        for item in framer.feed(chunk):
            _emit(item, out)
    for item in framer.idle():
        _emit(item, out)
    summary = {"summary": framer.stats.as_dict()}
    print(json.dumps(summary), file=err)
    if at_seen and not framer.stats.frames:
        print(AT_HINT, file=err)
    return framer.stats


def _chunks(stream: BinaryIO, framer: StreamFramer | AtLineFramer, out: TextIO) -> Iterable[bytes]:
    """What the stream holds, as soon as it arrives; idle gaps flush the framer."""
    try:
        fd = stream.fileno()
        regular = stat.S_ISREG(os.fstat(fd).st_mode)
    except (OSError, ValueError):
        fd, regular = -1, True  # an in-memory stream: read it as a file
    if regular:
        while chunk := stream.read(CHUNK):
            yield chunk
        return
    while True:
        ready, _, _ = select.select([fd], [], [], IDLE_GAP_S)
        if not ready:
            for item in framer.idle():
                _emit(item, out)
            continue
        try:
            chunk = os.read(fd, CHUNK)
        except OSError as error:
            if error.errno == errno.EIO:
                return  # a pty whose other side closed: the end of this capture
            raise
        if not chunk:
            return
        yield chunk


def _emit(item: Item, out: TextIO, *, input_text: str | None = None) -> None:
    view = item_to_dict(item)
    if input_text is not None and isinstance(item, Rejected):
        view["input"] = input_text
    print(json.dumps(view, ensure_ascii=False), file=out, flush=True)


def run(frames: list[str], file: str | None, *, dialect: str, rssi_append: bool) -> int:
    if file is None:
        return decode_hex_args(frames, sys.stdout, sys.stderr)
    if file == "-":
        decode_capture(
            sys.stdin.buffer, sys.stdout, sys.stderr, dialect=dialect, rssi_append=rssi_append
        )
        return 0
    try:
        stream = open(file, "rb", buffering=0)  # noqa: SIM115 - closed below; unbuffered for ttys
    except OSError as error:
        raise CaptureError(f"cannot read {file}: {error.strerror}") from error
    with stream:
        decode_capture(stream, sys.stdout, sys.stderr, dialect=dialect, rssi_append=rssi_append)
    return 0


# --- commercial device payloads (covergw decode --device MODEL) ---


def decode_device_args(
    model: str, payloads: Iterable[str], out: TextIO, *, fport: int | None
) -> int:
    """One JSON line per payload of a device model; a refused one prints its reason."""
    from gateway.protocol.devices import DeviceDecodeError, get_model  # noqa: PLC0415
    from gateway.protocol.devices.render import decoded_to_dict, rejected_to_dict  # noqa: PLC0415

    device = get_model(model)
    if fport is None:
        fport = device.default_fport
    for text in payloads:
        head: dict[str, object] = {"device": model}
        if device.transport == "lorawan":
            head["fport"] = fport
        try:
            view = head | decoded_to_dict(
                device.decode(parse_hex(text), fport=fport, at=time.time())
            )
        except HexError as err:
            view = head | {"rejected": err.reason.value, "detail": err.detail, "input": text}
        except DeviceDecodeError as err:
            view = head | rejected_to_dict(err) | {"input": text}
        print(json.dumps(view, ensure_ascii=False), file=out)
    return 0
