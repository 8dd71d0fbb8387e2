"""Every worked example of spec real-sensors.md decodes to the spec's values."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.observation import DeviceEventKind
from gateway.protocol.devices import (
    MODELS,
    Decoded,
    DeviceDecodeError,
    decode_nb_frame,
    get_model,
)

AT = 1_764_468_907.0


def dec(model: str, hex_: str, fport: int | None = 85) -> Decoded:
    return get_model(model).decode(bytes.fromhex(hex_.replace(" ", "")), fport=fport, at=AT)


def fields(model: str, hex_: str, fport: int | None = 85) -> dict[str, Any]:
    return dict(dec(model, hex_, fport).fields)


# --- 1.2 device attributes, 2.2 EM310-TILT ---


def test_power_on_uplink_is_device_info_not_telemetry() -> None:
    got = dec("em310-tilt", "ff0bff ff0101 ff166723c09123450078 ff090110 ff0a0110 ff0f00")
    assert got.fields == {
        "device_status": "on",
        "ipso_version": "v0.1",
        "sn": "6723c09123450078",
        "hardware_version": "v1.1",
        "firmware_version": "v1.10",
        "lorawan_class": "Class A",
    }
    (event,) = got.events
    assert event.kind is DeviceEventKind.DEVICE_INFO
    assert event.detail["firmware"] == "v1.10"
    assert event.detail["hardware"] == "v1.1"
    assert event.detail["serial"] == "6723c09123450078"
    assert got.quantities == type(got.quantities)()  # no telemetry at all


def test_firmware_bytes_printed_in_hex() -> None:
    assert fields("em400-mud", "ff0a010e")["firmware_version"] == "v1.e"
    assert fields("em400-mud", "ffff0102")["tsl_version"] == "v1.2"


@pytest.mark.parametrize(
    ("hex_", "want"),
    [
        (
            "03cf00000000282307",
            {"tilt_x_deg": 0, "tilt_y_deg": 0, "tilt_z_deg": 90}
            | {"device_alarm_x": True, "device_alarm_y": True, "device_alarm_z": True},
        ),
        (
            "017564 03cf3a0218fc7a2300",
            {"battery_pct": 100, "tilt_x_deg": 5.7, "tilt_y_deg": -10, "tilt_z_deg": 90.82}
            | {"device_alarm_x": False, "device_alarm_y": False, "device_alarm_z": False},
        ),
        (
            "03cfe8030000282301",
            {"tilt_x_deg": 10, "tilt_y_deg": 0, "tilt_z_deg": 90}
            | {"device_alarm_x": True, "device_alarm_y": False, "device_alarm_z": False},
        ),
    ],
)
def test_em310_tilt_readings(hex_: str, want: dict[str, Any]) -> None:
    assert fields("em310-tilt", hex_) == want


def test_em310_tilt_alarm_bits_become_device_alarms() -> None:
    q = dec("em310-tilt", "03cfe8030000282301").quantities
    assert (q.tilt_x_deg, q.tilt_y_deg, q.tilt_z_deg) == (10.0, 0.0, 90.0)
    assert q.device_alarms == {"tilt_x"}
    assert dec("em310-tilt", "03cf000000002823ff").quantities.device_alarms == {
        "tilt_x",
        "tilt_y",
        "tilt_z",
    }  # bits 3-7 ignored


@pytest.mark.parametrize(
    ("hex_", "setting", "values"),
    [
        ("fe035802", "report_interval", {"seconds": 600}),
        (
            "ff0609e803d0070a000500",
            "angle_x_alarm_config",
            {
                "condition": "below",
                "threshold_min": 10,
                "threshold_max": 20,
                "lock_time": 10,
                "continue_time": 5,
            },
        ),
    ],
)
def test_em310_tilt_config_echo_is_config_ack(
    hex_: str, setting: str, values: dict[str, Any]
) -> None:
    got = dec("em310-tilt", hex_)
    assert got.fields == {setting: values}
    (event,) = got.events
    assert event.kind is DeviceEventKind.CONFIG_ACK
    assert dict(event.detail) == {"setting": setting, **values}


@pytest.mark.parametrize(
    ("action", "params", "want"),
    [
        ("set_interval", {"seconds": 600}, "ff035802"),
        ("set_interval", {"seconds": 1200}, "ff03b004"),
        ("reboot", {}, "ff10ff"),
        ("rezero", {}, "ff62ff"),
        (
            "set_thresholds",
            {"axis": "x", "condition": "below", "min_deg": 10, "max_deg": 20}
            | {"lock_s": 10, "continue_s": 10},
            "ff0609e803d0070a000a00",
        ),
        (
            "set_thresholds",
            {"axis": "z", "condition": "above", "min_deg": -1.64, "max_deg": 1.64}
            | {"lock_s": 60, "continue_s": 3},
            "ff061a5cffa4003c000300",
        ),
    ],
)
def test_em310_tilt_downlinks(action: str, params: dict[str, Any], want: str) -> None:
    assert get_model("em310-tilt").downlink(action, **params) == (85, bytes.fromhex(want))


# --- 3.2 EM400 (LoRaWAN) ---


@pytest.mark.parametrize("model", ["em400-mud", "em400-udl"])
@pytest.mark.parametrize(
    ("hex_", "want"),
    [
        (
            "01755c 03670101 04824408 050001",
            {"battery_pct": 92, "temperature_c": 25.7, "distance_mm": 2116}
            | {"position": "tilt", "cover_displaced": True},
        ),
        (
            "8367e80001 8482410601",
            {"temperature_c": 23.2, "temperature_alarm": "threshold_alarm"}
            | {"distance_mm": 1601, "distance_alarm": "threshold_alarm"},
        ),
        (
            "01756403670b0104823b01050001",
            {"battery_pct": 100, "temperature_c": 26.7, "distance_mm": 315}
            | {"position": "tilt", "cover_displaced": True},
        ),
        ("03679cff04820000", {"temperature_c": -10, "distance_mm": 0}),
        (
            "83672c0100",
            {"temperature_c": 30, "temperature_alarm": "threshold_alarm_release"},
        ),
    ],
)
def test_em400_readings(model: str, hex_: str, want: dict[str, Any]) -> None:
    assert fields(model, hex_) == want


def test_em400_position_tilt_means_cover_displaced() -> None:
    q = dec("em400-mud", "01755c 03670101 04824408 050001").quantities
    assert q.cover_displaced is True
    assert q.distance_mm == 2116
    assert q.battery_pct == 92
    assert q.temperature_c == 25.7
    assert dec("em400-mud", "050000").quantities.cover_displaced is False
    unknown = dec("em400-mud", "050007")
    assert unknown.quantities.cover_displaced is None
    assert unknown.fields["position"] == "unknown"


def test_em400_alarm_records_are_device_alarms() -> None:
    assert dec("em400-mud", "8367e80001 8482410601").quantities.device_alarms == {
        "temperature",
        "distance",
    }
    assert dec("em400-mud", "83672c0100").quantities.device_alarms == frozenset()


@pytest.mark.parametrize("model", ["em400-mud", "em400-udl"])
def test_em400_downlinks(model: str) -> None:
    m = get_model(model)
    assert m.downlink("set_thresholds", condition="below", min_mm=1000, release=True) == (
        85,
        bytes.fromhex("ff0689e803000000000000"),
    )
    assert m.downlink("reboot") == (85, bytes.fromhex("ff10ff"))
    assert m.downlink("set_interval", seconds=1200) == (85, bytes.fromhex("ff03b004"))
    with pytest.raises(DeviceDecodeError) as err:
        m.downlink("rezero")
    assert err.value.reason == "unsupported"


def test_install_height_echo_only_on_mud() -> None:
    assert fields("em400-mud", "ff77e803") == {"install_height": {"mm": 1000}}
    udl = dec("em400-udl", "ff77e803")
    assert udl.partial == "unknown_channel"


# --- 3.4 NB-IoT cellular frame ---

NB_README = (
    "02 0001 005f 00 0000 01 30313031 30313130 36373439443139303534363930303331 "
    "383638353038303634383037333530 343630303433323234323133313130 "
    "3839383630343132313032323730303632383537 09 000e 01756403670b0104823b01050001"
)
NB_LOCATION = (
    "020007006400000c013031303130313130363734394431393035343639303033313836383530383036"
    "34383037333530343630303433323234323133313130383938363034313231303232373030363238353712"
    "001301755a0688ef1361024814f006138482d00701"
)
NB_HISTORY = (
    "020001006d000005013031303130313130363734394431393035343639303033313836383530383036"
    "34383037333530343630303433323234323133313130383938363034313231303232373030363238353709"
    "001c0175370367130004824c1f05000101750e0367000304820d25050000"
)


def nb(hex_: str) -> bytes:
    return bytes.fromhex(hex_.replace(" ", ""))


def test_nb_readme_sample() -> None:
    frame = decode_nb_frame(nb(NB_README), at=AT)
    assert len(nb(NB_README)) == 100
    assert frame.header_fields() == {
        "imei": "868508064807350",
        "imsi": "460043224213110",
        "iccid": "89860412102270062857",
        "csq": 9,
        "frame_cnt": 0,
        "sn": "6749D19054690031",
        "id": 1,
        "flag": 0,
        "protocol_version": 1,
        "firmware_version": "0101",
        "hardware_version": "0110",
    }
    assert [dict(r.fields) for r in frame.readings] == [
        {
            "battery_pct": 100,
            "temperature_c": 26.7,
            "distance_mm": 315,
            "position": "tilt",
            "cover_displaced": True,
        }
    ]


def test_nb_location_then_alarm_starts_a_second_reading() -> None:
    frame = decode_nb_frame(nb(NB_LOCATION), at=AT)
    assert (frame.frame_id, frame.frame_cnt, frame.csq) == (7, 12, 18)
    assert [dict(r.fields) for r in frame.readings] == [
        {
            "battery_pct": 90,
            "latitude": 39.916527,
            "longitude": 116.397128,
            "motion_status": "stop",
            "geofence_status": "outside",
        },
        {"distance_mm": 2000, "distance_alarm": "threshold_alarm"},
    ]
    assert frame.readings[1].quantities.device_alarms == {"distance"}


def test_nb_history_keeps_order() -> None:
    frame = decode_nb_frame(nb(NB_HISTORY), at=AT)
    assert frame.frame_cnt == 5
    assert [dict(r.fields) for r in frame.readings] == [
        {
            "battery_pct": 55,
            "temperature_c": 1.9,
            "distance_mm": 8012,
            "position": "tilt",
            "cover_displaced": True,
        },
        {
            "battery_pct": 14,
            "temperature_c": 76.8,
            "distance_mm": 9485,
            "position": "normal",
            "cover_displaced": False,
        },
    ]
    assert all(r.at is None for r in frame.readings)


def test_nb_model_wraps_the_frame() -> None:
    got = MODELS["em400-mud-nb"].decode(nb(NB_HISTORY), fport=None, at=AT)
    assert got.fields["imei"] == "868508064807350"
    assert len(got.readings) == 2
    assert MODELS["em400-mud-nb"].transport == "nbiot"


# --- 3.5 EM310-UDL ---


def test_em310_udl_readme_example() -> None:
    got = dec("em310-udl", "01755c 03824408 040001")
    assert got.fields == {
        "battery_pct": 92,
        "distance_mm": 2116,
        "position": "tilt",
        "cover_displaced": True,
    }
    assert got.quantities.cover_displaced is True


def test_em310_udl_alarm_echo_has_signed_thresholds() -> None:
    got = dec("em310-udl", "ff0681 18fc e803 3c00 0500")
    assert got.fields["distance_alarm_config"] == {
        "condition": "below",
        "alarm_release": True,
        "threshold_min_mm": -1000,
        "threshold_max_mm": 1000,
        "lock_time": 60,
        "continue_time": 5,
    }
    assert get_model("em310-udl").downlink(
        "set_thresholds", condition="below", min_mm=-1000, max_mm=1000, lock_s=60, continue_s=5
    ) == (85, bytes.fromhex("ff068118fce8033c000500"))


# --- 4.5 DDS75-LB ---


@pytest.mark.parametrize(
    ("hex_", "want"),
    [
        (
            "0ce405dc00000001",
            {"battery_mv": 3300, "distance_mm": 1500, "interrupt_flag": 0}
            | {"temperature_c": 0.0, "sensor_flag": 1},
        ),
        (
            "0d2a0b1a01ff3f01",
            {"battery_mv": 3370, "distance_mm": 2842, "interrupt_flag": 1}
            | {"temperature_c": -19.3, "sensor_flag": 1},
        ),
        (
            "0b4500140100fa00",
            {"battery_mv": 2885, "distance_raw_mm": 20, "interrupt_flag": 1}
            | {"temperature_c": 25.0, "sensor_flag": 0},
        ),
    ],
)
def test_dds75_periodic(hex_: str, want: dict[str, Any]) -> None:
    assert fields("dds75-lb", hex_, 2) == want


def test_dds75_distance_only_with_sensor_flag() -> None:
    good = dec("dds75-lb", "0d2a0b1a01ff3f01", 2)
    assert good.quantities.distance_mm == 2842
    assert good.quantities.battery_mv == 3370
    assert good.quantities.temperature_c == -19.3
    assert good.events == ()
    for flag in ("00", "02", "ff"):
        bad = dec("dds75-lb", "0b45001401 00fa" + flag, 2)
        assert bad.quantities.distance_mm is None
        assert bad.fields["distance_raw_mm"] == 20
        (fault,) = bad.events
        assert fault.kind is DeviceEventKind.SENSOR_FAULT
        assert fault.detail["sensor_flag"] == int(flag, 16)


def test_dds75_datalog_one_reading_per_record_in_utc() -> None:
    got = dec("dds75-lb", "0cea271000fa416553f100", 3)
    assert got.fields == {"pnackmd": False, "records": 1}
    (reading,) = got.readings
    assert reading.at == 1_700_000_000.0
    assert reading.fields == {
        "time": "2023-11-14T22:13:20Z",
        "battery_mv": 3306,
        "distance_mm": 10000,
        "temperature_c": 25.0,
        "interrupt_flag": 1,
    }


def test_dds75_status_is_device_info() -> None:
    got = dec("dds75-lb", "27011101ff0ce4", 5)
    assert got.fields == {
        "sensor_model": "DDS75-LB",
        "firmware_version": "1.1.1",
        "frequency_band": "EU868",
        "sub_band": None,
        "battery_mv": 3300,
    }
    (info,) = got.events
    assert info.kind is DeviceEventKind.DEVICE_INFO
    assert info.detail["firmware"] == "1.1.1"
    assert got.quantities.battery_mv == 3300


def test_dds75_detect_mode() -> None:
    assert fields("dds75-lb", "05dc05e6", 6) == {"detect_distance_mm": [1500, 1510]}


def test_dds75_downlinks() -> None:
    m = get_model("dds75-lb")
    assert m.downlink("set_interval", seconds=1200) == (2, bytes.fromhex("010004b0"))
    assert m.downlink("reboot") == (2, bytes.fromhex("04ff"))
    assert m.downlinks == {"set_interval", "reboot"}
