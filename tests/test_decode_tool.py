"""``covergw decode`` as a technician uses it: hex arguments, raw captures, AT captures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gateway.cli import main
from tests.vectors import VECTORS, vector


def lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_hex_arguments_one_json_per_frame(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["decode", VECTORS["report"], VECTORS["report_unknown_tag"].replace(" ", "")]) == 0
    report, unknown = lines(capsys.readouterr().out)
    assert report["node"] == "00C0FFEE"
    assert report["type"] == "REPORT"
    assert report["records"][0] == {"tlv": "tilt", "x_deg": -1.5, "y_deg": 0.3, "tilt_deg": 1.53}
    assert {"tlv": "temperature", "celsius": 21.5} in report["records"]
    assert unknown["records"][0] == {
        "tlv": "unknown",
        "tag": 127,
        "tag_hex": "0x7F",
        "raw_hex": "010203",
    }


def test_bad_frames_print_reason_and_go_on(capsys: pytest.CaptureFixture[str]) -> None:
    bad_crc = VECTORS["boot"][:-2] + "00"
    assert main(["decode", bad_crc, "xyz", VECTORS["heartbeat"]]) == 0
    out = lines(capsys.readouterr().out)
    assert [o.get("rejected") for o in out] == ["bad_crc", "bad_hex", None]
    assert "computed 0xC9BD" in str(out[0]["detail"])
    assert out[2]["flags"] == {"node_alarm": False, "retransmission": False, "low_battery": True}


def test_capture_file_with_noise(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "lora.bin"
    capture.write_bytes(
        b"\x00\xa5\x5a\xff"
        + vector("report")
        + b"\xa5\x5a\x11"
        + vector("boot")
        + vector("event_open")[:10]
    )
    assert main(["decode", "--file", str(capture)]) == 0
    captured = capsys.readouterr()
    frames = [o for o in lines(captured.out) if "node" in o]
    assert [f["type"] for f in frames] == ["REPORT", "BOOT"]
    summary = json.loads(captured.err.strip().splitlines()[-1])["summary"]
    assert summary["frames"] == 2
    assert summary["rejected_bad_length"] == 1
    assert summary["rejected_truncated"] >= 1
    assert summary["skipped_bytes"] > 0


def test_at_capture(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = tmp_path / "at.log"
    capture.write_bytes(
        b"AT+PRECV=65534\r\nOK\r\n+EVT:RXP2P:-97:7:"
        + VECTORS["report"].replace(" ", "").encode()
        + b"\r\n"
    )
    assert main(["decode", "--dialect", "at", "--file", str(capture)]) == 0
    captured = capsys.readouterr()
    (frame,) = lines(captured.out)
    assert frame["rx_rssi_dbm"] == -97
    assert json.loads(captured.err)["summary"]["ignored_lines"] == 2


def test_wrong_arguments_exit_nonzero() -> None:
    with pytest.raises(SystemExit) as info:
        main(["decode"])
    assert info.value.code == 2
