"""Each Quirk note of spec real-sensors.md: where the vendor decoder is lax, covergw is strict."""

from __future__ import annotations

import pytest

from gateway.errors import GatewayError, ProtocolError
from gateway.protocol.devices import (
    MODELS,
    Decoded,
    DeviceDecodeError,
    DeviceStats,
    build_nb_frame,
    decode_nb_frame,
    em400,
    get_model,
)

AT = 1_764_468_907.0


def reject(model: str, hex_: str, fport: int | None = 85) -> DeviceDecodeError:
    with pytest.raises(DeviceDecodeError) as err:
        get_model(model).decode(bytes.fromhex(hex_.replace(" ", "")), fport=fport, at=AT)
    return err.value


def test_error_is_a_protocol_error_with_a_reason() -> None:
    err = reject("em310-tilt", "03cf0000")
    assert isinstance(err, ProtocolError)
    assert isinstance(err, GatewayError)
    assert err.reason == "truncated"
    assert err.offset == 0
    assert "angle" in err.detail


@pytest.mark.parametrize(
    ("model", "hex_"),
    [
        ("em310-tilt", "017564 03cf3a0218fc7a23"),  # last byte of the angle record missing
        ("em310-tilt", "0175"),  # value missing
        ("em310-tilt", "01"),  # header cut
        ("em400-mud", "01755c 036701"),
        ("em400-udl", "8482 4106"),
        ("em310-udl", "0382 44"),
        ("em400-mud", "ff16 6723c091"),  # an 8-byte serial cut (README says 2 bytes: it is 8)
    ],
)
def test_truncated_record_refuses_the_payload(model: str, hex_: str) -> None:
    """Vendor: reads past the end as zero bytes and returns a plausible, wrong value."""
    assert reject(model, hex_).reason == "truncated"


def test_unknown_record_ends_the_walk_and_keeps_what_came_before() -> None:
    """Vendor: stops silently (or throws on 0xFE/0xFF); covergw keeps the prefix, marks partial."""
    got = get_model("em310-tilt").decode(bytes.fromhex("01756405821027"), fport=85, at=AT)
    assert got.partial == "unknown_channel"
    assert got.fields == {"battery_pct": 100}
    assert got.quantities.battery_pct == 100
    assert got.extra["unknown_record"] == "0582"
    unknown_echo = get_model("em310-tilt").decode(bytes.fromhex("017564ff9901"), fport=85, at=AT)
    assert unknown_echo.partial == "unknown_channel"
    assert unknown_echo.fields == {"battery_pct": 100}


def test_location_record_stops_the_lorawan_walk_only() -> None:
    got = get_model("em400-mud").decode(
        bytes.fromhex("01755a0688ef1361024814f006138482d00701"), fport=85, at=AT
    )
    assert got.partial == "unknown_channel"
    assert got.fields == {"battery_pct": 90}


@pytest.mark.parametrize("model", ["em400-mud", "em400-udl"])
def test_temperature_is_signed_on_both_transports(model: str) -> None:
    """Vendor's cellular decoder reads f6ff as 6552.6 °C; it is -1.0."""
    lora = get_model(model).decode(bytes.fromhex("0367f6ff"), fport=85, at=AT)
    assert lora.quantities.temperature_c == -1.0
    frame = decode_nb_frame(build_nb_frame(bytes.fromhex("0367f6ff83679cff01")), at=AT)
    assert [r.quantities.temperature_c for r in frame.readings] == [-1.0, -10.0]


def test_constant_value_records_report_the_raw_byte() -> None:
    got = get_model("em310-tilt").decode(bytes.fromhex("ff10ff"), fport=85, at=AT)
    assert got.fields == {"reboot": {"raw": 0xFF}}
    boot = get_model("em310-tilt").decode(bytes.fromhex("fffe01"), fport=85, at=AT)
    assert [e.kind.value for e in boot.events] == ["boot"]


def test_milesight_refuses_other_fports() -> None:
    assert reject("em310-tilt", "017564", 2).reason == "unknown_fport"
    assert get_model("em310-tilt").decode(b"\x01\x75\x64", fport=None, at=AT).fields == {
        "battery_pct": 100
    }


# --- NB-IoT frame lengths and start flag ---

README_RECORDS = bytes.fromhex("01756403670b0104823b01050001")


def test_nb_length_rules() -> None:
    frame = build_nb_frame(README_RECORDS)
    assert decode_nb_frame(frame, at=AT).imei == "868508064807350"
    for cut in (frame[:-1], frame[:85], b""):
        with pytest.raises(DeviceDecodeError) as err:
            decode_nb_frame(cut, at=AT)
        assert err.value.reason == "truncated"
    with pytest.raises(DeviceDecodeError) as err:
        decode_nb_frame(frame + b"\x00", at=AT)
    assert err.value.reason == "bad_length"
    wrong_length = frame[:3] + (96).to_bytes(2, "big") + frame[5:]
    with pytest.raises(DeviceDecodeError) as err:
        decode_nb_frame(wrong_length, at=AT)
    assert err.value.reason == "bad_length"
    with pytest.raises(DeviceDecodeError) as err:
        decode_nb_frame(b"\x03" + frame[1:], at=AT)
    assert err.value.reason == "bad_start_flag"


def test_nb_csq_99_is_unknown() -> None:
    frame = decode_nb_frame(build_nb_frame(README_RECORDS, csq=99), at=AT)
    assert frame.csq == 99
    assert frame.header_fields()["csq"] is None


def test_nb_imei_must_be_digits() -> None:
    with pytest.raises(DeviceDecodeError) as err:
        decode_nb_frame(build_nb_frame(README_RECORDS, imei="86850806480735X"), at=AT)
    assert err.value.reason == "bad_value"


def test_nb_truncated_record_refuses_the_frame() -> None:
    with pytest.raises(DeviceDecodeError) as err:
        decode_nb_frame(build_nb_frame(README_RECORDS[:-1]), at=AT)
    assert err.value.reason == "truncated"


def test_nb_grouping_rule_side_effect_kept() -> None:
    """A record whose channel (mod 16) is not above the previous one starts a new reading."""
    records = em400.build_reading(battery_pct=90, distance_mm=100) + em400.build_reading(
        battery_pct=80
    )
    frame = decode_nb_frame(build_nb_frame(records), at=AT)
    assert [r.fields.get("battery_pct") for r in frame.readings] == [90, 80]


# --- Dragino lengths ---


@pytest.mark.parametrize(
    ("fport", "hex_", "reason"),
    [
        (2, "0ce405dc000000", "truncated"),  # 7 bytes
        (2, "0ce405dc0000000100", "bad_length"),  # trailing byte never ignored
        (2, "", "truncated"),
        (3, "", "truncated"),  # vendor: ReferenceError
        (3, "0cea271000fa416553f1", "truncated"),
        (3, "0cea271000fa416553f10000", "bad_length"),
        (5, "27011101ff0c", "truncated"),
        (5, "27011101ff0ce400", "bad_length"),
        (6, "", "truncated"),
        (6, "05dc05", "bad_length"),
        (1, "0ce405dc00000001", "unknown_fport"),
        (None, "0ce405dc00000001", "unknown_fport"),
        (85, "0ce405dc00000001", "unknown_fport"),
    ],
)
def test_dds75_exact_lengths(fport: int | None, hex_: str, reason: str) -> None:
    assert reject("dds75-lb", hex_, fport).reason == reason


def test_dds75_battery_masked() -> None:
    got = get_model("dds75-lb").decode(bytes.fromhex("cce405dc00000001"), fport=2, at=AT)
    assert got.fields["battery_mv"] == 3300  # bits 14-15 are flags


def test_dds75_datalog_quirks() -> None:
    """PNACKMD bit masked out of the battery; temperature signed; time unsigned past 2038."""
    got = get_model("dds75-lb").decode(bytes.fromhex("8cea2710ff9c01" + "90000000"), fport=3, at=AT)
    assert got.fields["pnackmd"] is True
    (reading,) = got.readings
    assert reading.fields["battery_mv"] == 3306
    assert reading.fields["temperature_c"] == -10.0
    assert reading.at == 0x90000000  # 2046, not 1903
    assert reading.fields["time"].startswith("2046-")


def test_dds75_multi_distance_variant() -> None:
    payload = bytes.fromhex("1ce4" + "000000000000" + "05dc05e6" + "00 00fa 01".replace(" ", ""))
    got = get_model("dds75-lb").decode(payload, fport=2, at=AT)
    assert got.fields["battery_mv"] == 0x0CE4
    assert got.fields["additional_distance_mm"] == [1500, 1510]
    assert got.fields["temperature_c"] == 25.0
    assert reject("dds75-lb", "1ce4" + "00" * 9, 2).reason == "truncated"
    assert reject("dds75-lb", "1ce4" + "00" * 11, 2).reason == "bad_length"


# --- downlinks ---


def test_unsupported_and_bad_downlinks() -> None:
    with pytest.raises(DeviceDecodeError) as err:
        MODELS["dds75-lb"].downlink("rezero")
    assert err.value.reason == "unsupported"
    with pytest.raises(DeviceDecodeError) as err:
        MODELS["em400-mud-nb"].downlink("reboot")
    assert err.value.reason == "unsupported"
    for bad in (0, 64801, 1.5e9, 600.5, True, "600"):
        with pytest.raises(DeviceDecodeError) as err:
            MODELS["em310-tilt"].downlink("set_interval", seconds=bad)
        assert err.value.reason == "bad_value"
    with pytest.raises(DeviceDecodeError) as err:
        MODELS["em310-tilt"].downlink("set_interval", minutes=10)
    assert err.value.reason == "bad_value"
    with pytest.raises(DeviceDecodeError) as err:
        MODELS["em310-tilt"].downlink("set_thresholds", axis="w", condition="below")
    assert err.value.reason == "bad_value"
    with pytest.raises(DeviceDecodeError) as err:
        MODELS["em400-udl"].downlink("set_thresholds", condition="below", min_mm=5000)
    assert err.value.reason == "bad_value"


def test_get_model_unknown() -> None:
    with pytest.raises(DeviceDecodeError) as err:
        get_model("em999")
    assert err.value.reason == "unknown_model"


def test_stats_count_partials_and_refusals_by_reason() -> None:
    stats = DeviceStats()
    model = get_model("em310-tilt")
    for hex_ in ("017564", "01756405821027", "03cf00", "0175"):
        try:
            stats.accepted(model.decode(bytes.fromhex(hex_), fport=85, at=AT))
        except DeviceDecodeError as err:
            stats.refused(err)
    stats.accepted(decode_nb_model_history())
    counts = stats.as_dict()
    assert counts["decoded"] == 3
    assert counts["readings"] == 4
    assert counts["partial_unknown_channel"] == 1
    assert counts["rejected_truncated"] == 2
    assert counts["rejected_bad_length"] == 0


def decode_nb_model_history() -> Decoded:
    records = em400.build_reading(battery_pct=1) + em400.build_reading(battery_pct=2)
    return MODELS["em400-mud-nb"].decode(build_nb_frame(records), fport=None, at=AT)
