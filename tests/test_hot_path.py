"""The per-reading fast paths against the plain definitions they replace."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from gateway.edge import render, state
from gateway.edge.adapters import from_frame
from gateway.events import FrameHeard
from gateway.protocol.codec import decode_frame, encode_frame
from gateway.protocol.framing import Received
from gateway.protocol.messages import (
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
