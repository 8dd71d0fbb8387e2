"""``covergw decode``: what a technician runs on a hex dump or a raw capture."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable
from typing import BinaryIO, TextIO

from gateway.errors import HexError, ProtocolError
from gateway.protocol.codec import decode_frame
from gateway.protocol.framing import FramerStats, Item, Received, Rejected, make_framer
from gateway.protocol.render import item_to_dict

CHUNK = 64 * 1024


def parse_hex(text: str) -> bytes:
    cleaned = "".join(text.split()).replace(":", "").replace("-", "")
    if cleaned.lower().startswith("0x"):
        cleaned = cleaned[2:]
    try:
        return bytes.fromhex(cleaned)
    except ValueError as err:
        raise HexError(f"not hex: {text[:40]!r}") from err


def decode_hex_args(frames: Iterable[str], out: TextIO) -> int:
    """One JSON line per argument; a frame that fails prints its reason, not a traceback."""
    for text in frames:
        raw = b""
        try:
            raw = parse_hex(text)
            item: Item = Received(decode_frame(raw), raw)
        except ProtocolError as err:
            item = Rejected(err, raw)
        _emit(item, out, input_text=text)
    return 0


def decode_capture(
    stream: BinaryIO, out: TextIO, err: TextIO, *, dialect: str, rssi_append: bool
) -> FramerStats:
    """Run the live framer over a capture: the same code path as a serial port."""
    framer = make_framer(dialect, rssi_append=rssi_append)
    while chunk := stream.read(CHUNK):
        for item in framer.feed(chunk):
            _emit(item, out)
    for item in framer.idle():
        _emit(item, out)
    summary = {"summary": framer.stats.as_dict()}
    print(json.dumps(summary), file=err)
    return framer.stats


def _emit(item: Item, out: TextIO, *, input_text: str | None = None) -> None:
    view = item_to_dict(item)
    if input_text is not None and isinstance(item, Rejected):
        view["input"] = input_text
    print(json.dumps(view, ensure_ascii=False), file=out)


def run(frames: list[str], file: str | None, *, dialect: str, rssi_append: bool) -> int:
    if file is None:
        return decode_hex_args(frames, sys.stdout)
    if file == "-":
        decode_capture(
            sys.stdin.buffer, sys.stdout, sys.stderr, dialect=dialect, rssi_append=rssi_append
        )
        return 0
    with open(file, "rb") as stream:
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
