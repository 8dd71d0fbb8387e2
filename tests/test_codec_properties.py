"""The decoder is the trust boundary: round trips, and nothing but ProtocolError escapes."""

import contextlib
import struct
from pathlib import Path

import pytest
from construct import Const, Int8ub, Int32ub, Struct
from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import (
    CrcError,
    LengthError,
    MalformedTlvError,
    ProtocolError,
    RejectReason,
    SyncError,
    TrailingBytesError,
    TruncatedError,
    UnknownTypeError,
    VersionError,
)
from gateway.protocol import scn1, scn1_layouts, scn1_schema
from gateway.protocol.codec import (
    decode_body,
    decode_frame,
    encode_body,
    encode_envelope,
    encode_frame,
)
from gateway.protocol.layout import FixedLayout, layout_literal
from gateway.protocol.messages import Frame, GasKind, UnknownTlv
from tests.strategies import frames
from tests.vectors import vector


@given(frames)
def test_encode_decode_is_identity(frame: Frame) -> None:
    assert decode_frame(encode_frame(frame)) == frame


@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_frame(data)


@given(st.binary(min_size=9, max_size=240))
def test_arbitrary_body_with_valid_crc_decodes_or_raises_protocol_error(body: bytes) -> None:
    """Random bodies with a correct CRC reach the TLV decoder, the part random frames rarely do."""
    try:
        decode_frame(encode_envelope(body))
    except ProtocolError as err:
        reason = err.reason
    else:
        return
    assert reason not in (RejectReason.BAD_CRC, RejectReason.BAD_LENGTH)


@given(frames, st.data())
def test_any_single_bit_flip_is_caught(frame: Frame, data: st.DataObject) -> None:
    raw = bytearray(encode_frame(frame))
    bit = data.draw(st.integers(16, len(raw) * 8 - 1))  # past SYNC
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ProtocolError):
        decode_frame(bytes(raw))


def _body(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr.replace(" ", ""))


def test_bad_crc_names_both_values() -> None:
    raw = bytearray(vector("heartbeat"))
    raw[-1] ^= 0xFF
    with pytest.raises(CrcError) as info:
        decode_frame(bytes(raw))
    assert info.value.received == 0xCC03 ^ 0xFF
    assert info.value.computed == 0xCC03


@pytest.mark.parametrize("length", [0, 8, 241, 255])
def test_len_outside_9_to_240_is_bad_length(length: int) -> None:
    with pytest.raises(LengthError):
        decode_frame(b"\xa5\x5a" + bytes([length]) + bytes(length + 2))


def test_sync_truncation_and_trailing_bytes() -> None:
    raw = vector("boot")
    with pytest.raises(SyncError):
        decode_frame(b"\x5a\xa5" + raw[2:])
    with pytest.raises(TruncatedError):
        decode_frame(raw[:-1])
    with pytest.raises(TrailingBytesError):
        decode_frame(raw + b"\x00")


def test_unsupported_version_and_unknown_type() -> None:
    frame = decode_frame(vector("heartbeat"))
    with pytest.raises(VersionError):
        decode_frame(encode_envelope(encode_body(frame, version=2)))
    with pytest.raises(UnknownTypeError):
        decode_frame(encode_envelope(encode_body(frame, msg_type=9)))


@pytest.mark.parametrize(
    ("tlvs", "why"),
    [
        ("01 03 00 00 00", "known tag with the wrong L"),
        ("03 04 0C DA 00 00", "known tag, L too long"),
        ("03 02 0C", "record runs past the end"),
        ("03", "record header cut"),
        ("7F 05 01 02", "unknown tag runs past the end"),
    ],
)
def test_malformed_tlvs(tlvs: str, why: str) -> None:
    header = _body("01 03 00 00 00 2A 00 01 00")
    with pytest.raises(MalformedTlvError):
        decode_body(header + _body(tlvs))


def test_unnamed_enum_value_in_known_tag_is_kept_as_unknown() -> None:
    """A gas kind newer than this gateway is skipped and counted, not fatal."""
    body = _body("01 01 00 00 00 01 00 01 00") + _body("05 03 09 00 10") + _body("03 02 0E 10")
    frame = decode_body(body)
    assert frame.records[0] == UnknownTlv(5, b"\x09\x00\x10")
    assert frame.unknown_count == 1
    assert len(frame.records) == 2
    assert GasKind.CH4  # the known kinds still decode (see spec vectors)


def test_reserved_flag_bits_are_ignored() -> None:
    frame = decode_frame(vector("heartbeat"))
    body = bytearray(encode_body(frame))
    body[8] |= 0xF8
    assert decode_frame(encode_envelope(bytes(body))).flags == frame.flags


@given(st.sampled_from(sorted(scn1_schema.TLV_BODIES)), st.data())
def test_struct_layout_agrees_with_the_construct_definition(tag: int, data: st.DataObject) -> None:
    """The decoder's struct formats (the generated module) and construct read the same."""
    layout = scn1_layouts.TLV_LAYOUTS[tag]
    assert layout.length is not None
    raw = data.draw(st.binary(min_size=layout.length, max_size=layout.length))
    parsed = scn1_schema.TLV_BODIES[tag].parse(bytes([layout.length]) + raw)
    assert layout.fields.unpack(raw) == tuple(parsed[name] for name in layout.names)


@given(st.binary(min_size=scn1.HEADER_SIZE, max_size=scn1.HEADER_SIZE))
def test_header_layout_agrees_with_the_construct_definition(raw: bytes) -> None:
    parsed = scn1_schema.HEADER.parse(raw)
    layout = scn1_layouts.HEADER_LAYOUT
    assert layout.fields.unpack(raw) == tuple(parsed[name] for name in layout.names)


def test_the_generated_layouts_are_those_of_the_construct_definitions() -> None:
    """scn1_layouts is checked in; regenerated from construct now, it must be the same file."""
    checked_in = Path(scn1_layouts.__file__).read_text(encoding="utf-8")
    assert checked_in == scn1_schema.layouts_source(), (
        "gateway/protocol/scn1_layouts.py is stale: run "
        "python -m gateway.protocol.scn1_schema > gateway/protocol/scn1_layouts.py"
    )
    assert sorted(scn1_layouts.TLV_LAYOUTS) == sorted(scn1_schema.TLV_BODIES)
    assert scn1.HEADER_LAYOUT.fields.size == scn1.HEADER_SIZE


def test_a_changed_definition_changes_the_generated_layouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The freshness check can fail: a field's width changed in construct shows in the source."""
    before = scn1_schema.layouts_source()
    bodies = dict(scn1_schema.TLV_BODIES)
    bodies[scn1.Tag.BATTERY] = Struct("length" / Const(4, Int8ub), "mv" / Int32ub)
    monkeypatch.setattr(scn1_schema, "TLV_BODIES", bodies)
    after = scn1_schema.layouts_source()
    assert after != before
    assert '0x03: FixedLayout(4, struct.Struct(">L"), ("mv",)),  # BATTERY' in after


_FIELD_CODES = st.sampled_from(["b", "B", "h", "H", "i", "I", "l", "L", "q", "Q", "3s", "16s"])


@given(
    length=st.none() | st.integers(0, 255),
    order=st.sampled_from("<>"),
    codes=st.lists(_FIELD_CODES, min_size=1, max_size=12),
    data=st.data(),
)
def test_layout_literal_makes_the_same_layout_again(
    length: int | None, order: str, codes: list[str], data: st.DataObject
) -> None:
    names = data.draw(
        st.lists(
            st.from_regex(r"[a-z][a-z0-9_]{0,15}", fullmatch=True),
            min_size=len(codes),
            max_size=len(codes),
            unique=True,
        )
    )
    layout = FixedLayout(length, struct.Struct(order + "".join(codes)), tuple(names))
    again = eval(layout_literal(layout), {"FixedLayout": FixedLayout, "struct": struct})
    assert (again.length, again.fields.format, again.names) == (
        layout.length,
        layout.fields.format,
        layout.names,
    )
