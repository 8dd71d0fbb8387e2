"""The tools' small parsers and records: round trips, and hostile text raises only ValueError."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.console import MAX_MAINTENANCE_S, parse_duration
from gateway.drivers.modbus import EXCEPTION_MEANINGS, reply_timeout_s
from gateway.tools.busscan import ScanRow, parse_slaves

addresses = st.integers(min_value=1, max_value=247)


@given(st.lists(st.tuples(addresses, addresses), min_size=1, max_size=10))
def test_slave_ranges_round_trip(ranges: list[tuple[int, int]]) -> None:
    ranges = [(min(a, b), max(a, b)) for a, b in ranges]
    text = ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in ranges)
    expected = [n for a, b in ranges for n in range(a, b + 1)]
    assert parse_slaves(text) == expected


@given(st.text(max_size=40))
def test_slave_text_from_anyone_raises_only_value_error(text: str) -> None:
    try:
        found = parse_slaves(text)
    except ValueError:
        return
    assert all(1 <= a <= 247 for a in found)


@given(st.text(max_size=20))
def test_durations_from_anyone_raise_only_value_error(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert 0 < seconds <= MAX_MAINTENANCE_S
    assert math.isfinite(seconds)


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@given(
    st.builds(
        ScanRow,
        address=addresses,
        answered=st.booleans(),
        exception_code=st.none() | st.sampled_from(sorted(EXCEPTION_MEANINGS)),
        meaning=st.none() | st.text(max_size=30),
        looks_like=st.lists(st.text(max_size=20), max_size=3).map(tuple),
        configured=st.none() | st.text(max_size=20),
        note=st.none() | st.text(max_size=30),
    )
)
def test_scan_rows_round_trip_through_json(row: ScanRow) -> None:
    assert ScanRow.from_json(row.as_json()) == row


def test_a_full_scan_at_9600_fits_in_15_seconds_of_waiting() -> None:
    # The budget the per-address timeout is chosen for (the measured figure,
    # with the pty and pymodbus overheads, is in scripts/bench_modbus_scan.py).
    assert 247 * reply_timeout_s(9600) < 15.0
    assert reply_timeout_s(115200) < reply_timeout_s(9600)


async def test_hostile_modbus_requests_get_an_error_line_not_an_exception() -> None:
    import json  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from gateway.config import parse_config  # noqa: PLC0415
    from gateway.drivers.modbus import ModbusBus  # noqa: PLC0415
    from gateway.tools.busscan import serve  # noqa: PLC0415

    config = parse_config(
        {"gateway": {"id": "g", "state_dir": "/tmp/unused"},
         "modbus": [{"name": "rs485", "port": "/dev/ttyUSB-none",
                     "slaves": [{"address": 1, "profile": "qdy30a_level"}]}]},
        base_dir=Path("/tmp"),
    )  # fmt: skip
    bus = ModbusBus(config.modbus[0], lambda event, critical: None)  # never started: closed
    for request in [
        {"cmd": "modbus", "action": "scan", "port": "/dev/\x00tty"},
        {"cmd": "modbus", "action": "scan", "bus": ["x"], "port": 7},
        {"cmd": "modbus", "action": "dance"},
        {"cmd": "modbus", "action": "scan", "slaves": [0, 1e9, True]},
        {"cmd": "modbus", "action": "scan", "slaves": "1-247"},
        {"cmd": "modbus", "action": "scan", "timeout_s": float("nan")},  # then: bus closed
        {"cmd": "modbus", "action": "read", "slave": True},
        {"cmd": "modbus", "action": "read", "slave": 1, "profile": {"x": 1}},
        {"cmd": "modbus", "action": "read", "slave": 1},  # bus closed
    ]:
        lines = [line async for line in serve([bus], request)]
        assert len(lines) == 1
        assert "error" in json.loads(lines[0])
