"""The per-reading fast paths against the plain definitions they replace."""

from __future__ import annotations

import json
import zlib
from dataclasses import FrozenInstanceError, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway import wire
from gateway.drivers.serial_radio import is_critical
from gateway.edge import render, state
from gateway.edge.adapters import from_frame
from gateway.events import FrameHeard
from gateway.protocol.codec import decode_body, decode_frame, encode_frame
from gateway.protocol.framing import Received
from gateway.protocol.messages import (
    KNOWN_FLAGS,
    Battery,
    Frame,
    FrameFlags,
    Gas,
    MessageType,
    Temperature,
    Tilt,
    WaterDepth,
)
from gateway.protocol.render import flags_to_dict
from gateway.values import maker, quick_init
from tests.strategies import frames

# What readings, alarms and state rows hold: JSON-ready values, finite floats
# (``render.finite`` turns the others into null first), any text.
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


def _stdlib(payload: Any) -> bytes:
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@given(st.dictionaries(st.text(), _values, max_size=6))
def test_render_dumps_is_the_same_json_as_the_stdlib(payload: dict[str, Any]) -> None:
    out = render.dumps(payload)
    assert json.loads(out) == json.loads(_stdlib(payload))
    assert out.decode("utf-8")  # UTF-8, as before


@given(_values)
def test_state_rows_read_back_as_written(value: Any) -> None:
    assert json.loads(state.dumps(value)) == value


def test_what_orjson_refuses_still_renders() -> None:
    # Integer keys and integers beyond 64 bits went through the stdlib before.
    payload = {"a": {1: "x"}, "big": 2**70}
    assert render.dumps(payload) == _stdlib(payload)


@given(st.characters(categories=["Cs"]), st.text(max_size=4))
def test_text_with_a_lone_surrogate_renders_and_reads_back(surrogate: str, rest: str) -> None:
    # orjson refuses one; a hostile "\udXXX" escape in some JSON input makes one.
    text = f"{rest}{surrogate}x"  # lone: never one half of a pair (JSON would join a pair)
    payload = {"name": text, text: [text]}
    assert json.loads(render.dumps(payload)) == payload
    assert json.loads(state.dumps(payload)) == payload


@given(st.integers(min_value=0, max_value=7))
def test_adapter_flags_are_flags_to_dict(bits: int) -> None:
    """The adapter's bit tests give the telemetry the flags block it always had."""
    flags = FrameFlags(bits)
    raw = encode_frame(Frame(1, 1, MessageType.REPORT, flags, (Battery(3600),)))
    obs = from_frame(FrameHeard("lora0", 0.0, Received(decode_frame(raw), raw)))
    assert obs.extra["source"]["flags"] == flags_to_dict(decode_frame(raw).flags)


@given(frames)
def test_adapter_quantities_are_the_first_record_of_each_kind(frame: Frame) -> None:
    """The adapter's one pass over the records gives what ``Frame.first``/``all`` give."""
    raw = encode_frame(frame)
    obs = from_frame(FrameHeard("lora0", 0.0, Received(decode_frame(raw), raw)))
    decoded = decode_frame(raw)
    q = obs.quantities
    tilt, water = decoded.first(Tilt), decoded.first(WaterDepth)
    battery, temperature = decoded.first(Battery), decoded.first(Temperature)
    assert (q.tilt_x_deg, q.tilt_y_deg) == ((tilt.x_deg, tilt.y_deg) if tilt else (None, None))
    assert q.distance_mm == (water.distance_mm if water else None)
    assert q.distance_no_echo == (water is not None and water.distance_mm is None)
    assert q.battery_mv == (float(battery.voltage_mv) if battery else None)
    assert q.temperature_c == (temperature.celsius if temperature else None)
    assert dict(q.gas) == {g.kind.name: (g.value, g.unit) for g in decoded.all(Gas)}
    flags = flags_to_dict(decoded.flags)
    expected = {n for n in ("node_alarm", "low_battery") if flags[n]}
    assert q.device_alarms == expected


# --- cheaper values and formatting on the per-frame path ---


@quick_init
@dataclass(frozen=True, slots=True)
class _Quick:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)
    d: int = field(default=4, kw_only=True)


_make_quick = maker(_Quick)


@dataclass(frozen=True, slots=True)
class _Plain:
    a: int
    b: str = "b"
    c: list[int] = field(default_factory=list)
    d: int = field(default=4, kw_only=True)


@given(st.integers(), st.text(), st.lists(st.integers(), max_size=3), st.integers())
def test_quick_init_makes_what_the_dataclass_init_makes(
    a: int, b: str, c: list[int], d: int
) -> None:
    quick, plain = _Quick(a, b, c, d=d), _Plain(a, b, c, d=d)
    assert (quick.a, quick.b, quick.c, quick.d) == (plain.a, plain.b, plain.c, plain.d)
    assert quick == _Quick(a, b=b, c=list(c), d=d)
    assert repr(quick).removeprefix("_Quick") == repr(plain).removeprefix("_Plain")
    assert _Quick(a) == _Quick(a, "b", [], d=4)
    assert _Quick(a).c is not _Quick(a).c  # a factory default is made per value
    with pytest.raises(FrozenInstanceError):
        quick.a = a  # type: ignore[misc]
    with pytest.raises(TypeError):
        _Quick(a, b, c, d)  # type: ignore[call-arg]  # keyword-only stays keyword-only
    made = _make_quick(a, b, c, d=d)
    assert type(made) is _Quick
    assert made == quick
    assert _make_quick(a) == _Quick(a)
    assert _make_quick(a).c is not _make_quick(a).c
    with pytest.raises(FrozenInstanceError):
        made.b = b  # type: ignore[misc]


@dataclass(frozen=True, slots=True)
class _Base:
    a: int


@quick_init
@dataclass(frozen=True, slots=True)
class _Derived(_Base):  # a base of its own: no twin, the descriptors fill it
    b: str = "b"


@quick_init
@dataclass(frozen=True, slots=True)
class _Pair:  # too few fields for its __init__ to fill a twin; its maker does
    a: int
    b: int = 2


@given(st.integers(), st.text())
def test_values_filled_in_as_a_twin_or_not_are_the_class_s_own(a: int, b: str) -> None:
    for made, plain in (
        (_Derived(a, b), (a, b)),
        (maker(_Derived)(a, b), (a, b)),
        (_Pair(a, len(b)), (a, len(b))),
        (maker(_Pair)(a, len(b)), (a, len(b))),
        (_Quick(a, b), (a, b)),
        (_make_quick(a, b), (a, b)),
    ):
        assert type(made) in (_Derived, _Pair, _Quick)  # never the twin
        assert (made.a, made.b) == plain  # type: ignore[union-attr]
        assert made == type(made)(*plain)
        if not isinstance(made, _Quick):  # a list field: unhashable
            assert hash(made) == hash(type(made)(*plain))
        with pytest.raises(FrozenInstanceError):
            made.a = 0  # type: ignore[misc, union-attr]


def test_quick_init_refuses_what_it_cannot_keep_frozen() -> None:
    @dataclass(slots=True)
    class Mutable:
        a: int

    @dataclass(frozen=True)
    class NoSlots:
        a: int

    for cls in (Mutable, NoSlots):
        with pytest.raises(TypeError):
            quick_init(cls)
        with pytest.raises(TypeError):
            maker(cls)


@given(st.lists(st.floats(min_value=0, max_value=4e9), min_size=1, max_size=6))
def test_iso_remembering_its_last_answer_gives_the_same_text(stamps: list[float]) -> None:
    for at in [*stamps, *stamps, stamps[0]]:
        assert render.iso(at) == (
            datetime.fromtimestamp(at, UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z")
        )


@given(st.binary(max_size=600))
def test_packed_rows_are_what_a_freshly_primed_packer_makes(row: bytes) -> None:
    fresh = zlib.compressobj(
        wire.ROW_LEVEL,
        zlib.DEFLATED,
        wire.ROW_WBITS,
        wire.ROW_MEMLEVEL,
        zlib.Z_DEFAULT_STRATEGY,
        wire._ROW_ZDICT,
    )
    packed = wire.pack_row(row)
    assert packed == fresh.compress(row) + fresh.flush()
    assert wire.pack_row(row) == packed  # the primed packer is never used up
    assert wire.unpack_row(packed) == row


@given(st.integers(min_value=0, max_value=255))
def test_decoded_flags_are_the_known_bits(bits: int) -> None:
    raw = encode_frame(Frame(1, 1, MessageType.REPORT, FrameFlags.NONE, (Battery(3600),)))
    body = bytearray(raw[3:-2])
    body[8] = bits  # FLAGS: VER, TYPE, NODE 4, SEQ 2
    frame = decode_body(bytes(body))
    assert frame.flags == FrameFlags(bits & KNOWN_FLAGS)
    assert type(frame.flags) is FrameFlags
    assert is_critical(Received(frame, raw)) == bool(bits & FrameFlags.NODE_ALARM)
