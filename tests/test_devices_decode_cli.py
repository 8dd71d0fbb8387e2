"""``covergw decode --device MODEL [--fport N] HEX…`` as a technician runs it: a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from gateway.cli import DECODE_DEVICES
from gateway.protocol.devices import MODELS
from tests.test_devices_spec_examples import NB_HISTORY, NB_LOCATION
from tests.vectors import VECTORS


def covergw(*args: str) -> tuple[int, list[dict[str, Any]], str]:
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "decode", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


def test_cli_lists_every_model() -> None:
    assert set(DECODE_DEVICES) == {"scn1", *MODELS}


def test_milesight_payloads_one_object_each() -> None:
    rc, out, _ = covergw(
        "--device",
        "em310-tilt",
        "01756403cf3a0218fc7a2300",
        "01756405821027",
        "03cf0000",
        "not-hex",
        "ff0bff ff0a0110",
    )
    assert rc == 0
    reading, partial, truncated, bad_hex, info = out
    assert reading == {
        "device": "em310-tilt",
        "fport": 85,
        "battery_pct": 100,
        "tilt_x_deg": 5.7,
        "tilt_y_deg": -10.0,
        "tilt_z_deg": 90.82,
        "device_alarm_x": False,
        "device_alarm_y": False,
        "device_alarm_z": False,
    }
    assert partial == {
        "device": "em310-tilt",
        "fport": 85,
        "battery_pct": 100,
        "partial": True,
        "reason": "unknown_channel",
    }
    assert truncated["rejected"] == "truncated"
    assert "angle" in truncated["detail"]
    assert truncated["input"] == "03cf0000"
    assert bad_hex["rejected"] == "bad_hex"
    assert info["firmware_version"] == "v1.10"
    assert info["events"] == [{"event": "device_info", "device_status": "on", "firmware": "v1.10"}]


def test_em400_cover_displaced_and_alarm() -> None:
    rc, out, _ = covergw("--device", "em400-mud", "01755c0367010104824408050001", "8482410601")
    assert rc == 0
    assert out[0]["cover_displaced"] is True
    assert out[0]["distance_mm"] == 2116
    assert out[1] == {
        "device": "em400-mud",
        "fport": 85,
        "distance_mm": 1601,
        "distance_alarm": "threshold_alarm",
    }


def test_nb_frame_header_and_readings() -> None:
    rc, out, _ = covergw("--device", "em400-mud-nb", NB_LOCATION, NB_HISTORY, NB_HISTORY[:-2])
    assert rc == 0
    location, history, cut = out
    assert {k: location[k] for k in ("imei", "imsi", "iccid", "csq", "frame_cnt", "sn")} == {
        "imei": "868508064807350",
        "imsi": "460043224213110",
        "iccid": "89860412102270062857",
        "csq": 18,
        "frame_cnt": 12,
        "sn": "6749D19054690031",
    }
    assert "fport" not in location
    assert location["readings"][0]["latitude"] == 39.916527
    assert location["readings"][1] == {"distance_mm": 2000, "distance_alarm": "threshold_alarm"}
    assert [r["battery_pct"] for r in history["readings"]] == [55, 14]
    assert cut["rejected"] == "truncated"


def test_dragino_by_fport() -> None:
    rc, out, _ = covergw("--device", "dds75-lb", "0d2a0b1a01ff3f01", "0b4500140100fa00")
    assert rc == 0
    assert out[0]["fport"] == 2
    assert out[0]["distance_mm"] == 2842
    assert out[0]["temperature_c"] == -19.3
    assert "distance_mm" not in out[1]
    assert out[1]["distance_raw_mm"] == 20
    rc, out, _ = covergw("--device", "dds75-lb", "--fport", "3", "0cea271000fa416553f100")
    assert out[0]["readings"][0]["time"] == "2023-11-14T22:13:20Z"
    rc, out, _ = covergw("--device", "dds75-lb", "--fport", "9", "00")
    assert rc == 0
    assert out[0]["rejected"] == "unknown_fport"


def test_scn1_stays_the_default() -> None:
    rc, out, _ = covergw(VECTORS["report"].replace(" ", ""))
    assert rc == 0
    assert out[0]["node"] == "00C0FFEE"
    rc, same, _ = covergw("--device", "scn1", VECTORS["report"].replace(" ", ""))
    assert same == out


def test_wrong_arguments_exit_2() -> None:
    for args in (
        ("--device", "em999", "00"),
        ("--device", "em310-tilt"),
        ("--device", "em310-tilt", "--file", "x.bin"),
        ("--fport", "2", "a55a"),
        ("--device", "dds75-lb", "--fport", "two", "00"),
    ):
        rc, out, err = covergw(*args)
        assert rc == 2, args
        assert out == []
        assert "usage" in err
