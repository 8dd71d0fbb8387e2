"""Hypothesis: every model's records survive build and parse; no bytes raise anything else."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.protocol.devices import (
    MODELS,
    DeviceDecodeError,
    DeviceReason,
    build_nb_frame,
    dds75_lb,
    decode_nb_frame,
    em310_tilt,
    em310_udl,
    em400,
    milesight,
)

AT = 1_764_468_907.0
TABLES = {
    "em310-tilt": em310_tilt.TABLE,
    "em400-mud": em400.MUD_TABLE,
    "em400-udl": em400.UDL_TABLE,
    "em310-udl": em310_udl.TABLE,
    "nb": em400.NB_TABLE,
}
u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
i16 = st.integers(-0x8000, 0x7FFF)
fports = st.one_of(st.none(), st.integers(0, 255), st.integers(-(2**31), 2**31))


# --- arbitrary input never raises anything but DeviceDecodeError ---


@pytest.mark.parametrize("name", sorted(MODELS))
@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=120), fport=fports)
def test_arbitrary_bytes_only_raise_device_decode_error(
    name: str, payload: bytes, fport: int | None
) -> None:
    try:
        got = MODELS[name].decode(payload, fport=fport, at=AT)
    except DeviceDecodeError as err:
        reason = err.reason
    else:
        # the NB-IoT models label readings with the registry's model name
        assert got.model == name.removesuffix("-nb")
        reason = got.partial
    assert reason is None or reason in DeviceReason.__members__.values()


@pytest.mark.parametrize("name", sorted(TABLES))
@settings(max_examples=300)
@given(data=st.data())
def test_arbitrary_records_behind_known_pairs(name: str, data: st.DataObject) -> None:
    """Known (id, type) pairs with hostile values, then anything: the walk never crashes."""
    table = TABLES[name]
    keys = sorted(table)
    payload = b""
    for key in data.draw(st.lists(st.sampled_from(keys), max_size=6)):
        rec = table[key]
        payload += bytes((rec.channel, rec.type)) + data.draw(
            st.binary(min_size=rec.size, max_size=rec.size)
        )
    payload += data.draw(st.binary(max_size=12))
    reason = None
    try:
        milesight.walk(name, payload, table, AT, group=name == "nb")
    except DeviceDecodeError as err:
        reason = err.reason
    assert reason in (None, "truncated")


@settings(max_examples=300)
@given(records=st.binary(max_size=200), tail=st.binary(max_size=4), cut=st.integers(0, 300))
def test_nb_frame_arbitrary_data_and_cuts(records: bytes, tail: bytes, cut: int) -> None:
    frame = build_nb_frame(records)
    for candidate in (frame, frame + tail, frame[:cut]):
        try:
            frame = decode_nb_frame(candidate, at=AT)
        except DeviceDecodeError:
            continue
        assert len(candidate) == 86 + len(records)
        assert frame.readings


# --- every record of every table: build(parse(raw)) parses back the same ---


@pytest.mark.parametrize("name", sorted(TABLES))
@settings(max_examples=200)
@given(data=st.data())
def test_every_record_round_trips_through_construct(name: str, data: st.DataObject) -> None:
    table = TABLES[name]
    rec = table[data.draw(st.sampled_from(sorted(table)))]
    raw = data.draw(st.binary(min_size=rec.size, max_size=rec.size))
    parsed = rec.parse(raw)
    # The walk's parser (a struct layout derived from the construct body where it
    # can be) reads exactly what construct itself reads.
    values = parsed._asdict() if hasattr(parsed, "_asdict") else dict(parsed)
    reference = rec.body.parse(raw)
    assert {k: v for k, v in values.items() if not k.startswith("_")} == {
        k: v for k, v in reference.items() if not k.startswith("_")
    }
    rebuilt = rec.body.build(values)
    assert len(rebuilt) == rec.size
    assert rec.parse(rebuilt) == parsed
    # and the walk takes the rebuilt record whole
    got = milesight.walk(name, bytes((rec.channel, rec.type)) + rebuilt, table, AT)
    assert [r.partial for r in got] == [None]


# --- values through each model's builder and decoder ---

alarm_sets = st.frozensets(st.sampled_from(["tilt_x", "tilt_y", "tilt_z"]))


@given(battery=u8, x=i16, y=i16, z=i16, alarms=alarm_sets)
def test_em310_tilt_round_trip(
    battery: int, x: int, y: int, z: int, alarms: frozenset[str]
) -> None:
    payload = em310_tilt.build_reading(
        battery_pct=battery, tilt_deg=(x / 100, y / 100, z / 100), alarms=alarms
    )
    got = MODELS["em310-tilt"].decode(payload, fport=85, at=AT)
    q = got.quantities
    assert (q.battery_pct, q.tilt_x_deg, q.tilt_y_deg, q.tilt_z_deg) == (
        battery,
        x / 100,
        y / 100,
        z / 100,
    )
    assert q.device_alarms == alarms
    assert got.partial is None


em400_values = st.fixed_dictionaries(
    {},
    optional={
        "battery_pct": u8,
        "temperature_c": i16.map(lambda t: t / 10),
        "distance_mm": u16,
        "position": st.integers(0, 1),
        "temperature_alarm": st.integers(0, 1),
        "distance_alarm": st.integers(0, 1),
    },
)


def _expect_em400(values: dict[str, Any]) -> dict[str, Any]:
    want: dict[str, Any] = {}
    if "battery_pct" in values:
        want["battery_pct"] = float(values["battery_pct"])
    if "temperature_c" in values:
        want["temperature_c"] = values["temperature_c"]
    if "distance_mm" in values:
        want["distance_mm"] = float(values["distance_mm"])
    if "position" in values:
        want["cover_displaced"] = values["position"] == 1
    alarms = set()
    if values.get("temperature_alarm") == 1 and "temperature_c" in values:
        alarms.add("temperature")
    if values.get("distance_alarm") == 1 and "distance_mm" in values:
        alarms.add("distance")
    want["device_alarms"] = alarms
    return want


def _quantities(q: Any, keys: set[str]) -> dict[str, Any]:
    return {k: getattr(q, k) for k in keys}


@pytest.mark.parametrize("name", ["em400-mud", "em400-udl"])
@given(values=em400_values)
def test_em400_round_trip(name: str, values: dict[str, Any]) -> None:
    got = MODELS[name].decode(em400.build_reading(**values), fport=85, at=AT)
    want = _expect_em400(values)
    assert _quantities(got.quantities, set(want)) == want
    assert got.partial is None


@given(readings=st.lists(em400_values.filter(bool), min_size=1, max_size=5), csq=u8, cnt=u16)
def test_nb_frame_round_trip(readings: list[dict[str, Any]], csq: int, cnt: int) -> None:
    """Readings that each start at battery (channel 1) come back one for one, in order."""
    readings = [{"battery_pct": 50} | r for r in readings]
    frame = decode_nb_frame(
        build_nb_frame(
            b"".join(em400.build_reading(**r) for r in readings), csq=csq, frame_cnt=cnt
        ),
        at=AT,
    )
    assert (frame.csq, frame.frame_cnt) == (csq, cnt)
    assert len(frame.readings) == len(readings)
    for got, values in zip(frame.readings, readings, strict=True):
        want = _expect_em400(values)
        assert _quantities(got.quantities, set(want)) == want


@given(battery=u8, distance=u16, position=st.integers(0, 1))
def test_em310_udl_round_trip(battery: int, distance: int, position: int) -> None:
    payload = em310_udl.build_reading(battery_pct=battery, distance_mm=distance, position=position)
    q = MODELS["em310-udl"].decode(payload, fport=85, at=AT).quantities
    assert (q.battery_pct, q.distance_mm, q.cover_displaced) == (battery, distance, position == 1)


@given(
    battery=st.integers(0, 0x0FFF),
    distance=u16,
    temp=i16,
    interrupt=st.integers(0, 1),
    flag=u8,
)
def test_dds75_periodic_round_trip(
    battery: int, distance: int, temp: int, interrupt: int, flag: int
) -> None:
    payload = dds75_lb.build_periodic(
        battery_mv=battery,
        distance_mm=distance,
        temperature_c=temp / 10,
        interrupt=interrupt,
        sensor_flag=flag,
    )
    got = MODELS["dds75-lb"].decode(payload, fport=2, at=AT)
    q = got.quantities
    assert (q.battery_mv, q.temperature_c) == (battery, temp / 10)
    assert got.fields["interrupt_flag"] == interrupt
    assert q.distance_mm == (distance if flag == 1 else None)


datalog_records = st.fixed_dictionaries(
    {
        "bat_raw": st.integers(0, 0x3FFF),
        "distance_mm": u16,
        "temp_raw": i16,
        "flags": u8,
        "time": st.integers(0, 0xFFFFFFFF),
    }
)


@given(records=st.lists(datalog_records, min_size=1, max_size=8))
def test_dds75_datalog_round_trip(records: list[dict[str, int]]) -> None:
    got = MODELS["dds75-lb"].decode(dds75_lb.build_datalog(records), fport=3, at=AT)
    assert [
        (r.at, r.quantities.battery_mv, r.quantities.distance_mm, r.quantities.temperature_c)
        for r in got.readings
    ] == [(float(r["time"]), r["bat_raw"], r["distance_mm"], r["temp_raw"] / 10) for r in records]


@given(distances=st.lists(u16, min_size=1, max_size=40), battery=u16)
def test_dds75_detect_and_status_round_trip(distances: list[int], battery: int) -> None:
    model = MODELS["dds75-lb"]
    assert model.decode(dds75_lb.build_detect(distances), fport=6, at=AT).fields == {
        "detect_distance_mm": distances
    }
    status = model.decode(dds75_lb.build_status(battery_mv=battery), fport=5, at=AT)
    assert status.quantities.battery_mv == battery


# --- downlinks: every encoded command decodes back as the device's echo ---


@given(seconds=st.integers(60, 64800))
def test_interval_downlink_echo_round_trip(seconds: int) -> None:
    for name in ("em310-tilt", "em400-mud", "em400-udl", "em310-udl"):
        fport, payload = MODELS[name].downlink("set_interval", seconds=seconds)
        echo = MODELS[name].decode(payload, fport=fport, at=AT)
        assert echo.fields == {"report_interval": {"seconds": seconds}}


@given(
    axis=st.sampled_from(["x", "y", "z"]),
    condition=st.sampled_from(em310_tilt.CONDITIONS),
    low=i16,
    high=i16,
    lock=u16,
    cont=u16,
)
def test_tilt_threshold_downlink_echo_round_trip(
    axis: str, condition: str, low: int, high: int, lock: int, cont: int
) -> None:
    fport, payload = MODELS["em310-tilt"].downlink(
        "set_thresholds",
        axis=axis,
        condition=condition,
        min_deg=low / 100,
        max_deg=high / 100,
        lock_s=lock,
        continue_s=cont,
    )
    echo = MODELS["em310-tilt"].decode(payload, fport=fport, at=AT)
    assert echo.fields == {
        f"angle_{axis}_alarm_config": {
            "condition": condition,
            "threshold_min": low / 100,
            "threshold_max": high / 100,
            "lock_time": lock,
            "continue_time": cont,
        }
    }


@given(
    condition=st.sampled_from(em400.CONDITIONS),
    low=st.integers(0, 4500),
    high=st.integers(0, 4500),
    release=st.booleans(),
)
def test_em400_threshold_downlink_echo_round_trip(
    condition: str, low: int, high: int, release: bool
) -> None:
    fport, payload = MODELS["em400-mud"].downlink(
        "set_thresholds", condition=condition, min_mm=low, max_mm=high, release=release
    )
    echo = MODELS["em400-mud"].decode(payload, fport=fport, at=AT)
    assert echo.fields == {
        "distance_alarm_config": {
            "condition": condition,
            "mode": "standard",
            "alarm_release": release,
            "threshold_min_mm": low,
            "threshold_max_mm": high,
        }
    }
