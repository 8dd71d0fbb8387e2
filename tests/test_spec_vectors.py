"""Every SCN-1 test vector decodes to exactly what the spec says it holds."""

import pytest

from gateway.protocol.codec import decode_frame, encode_frame
from gateway.protocol.messages import (
    Battery,
    Event,
    EventCode,
    Firmware,
    FrameFlags,
    Gas,
    GasKind,
    Link,
    MessageType,
    Pressure,
    ResetCause,
    ResetCauseCode,
    Temperature,
    Tilt,
    UnknownTlv,
    Vibration,
    WaterDepth,
)
from gateway.protocol.scn1 import crc16_ccitt_false
from tests.vectors import VECTORS, vector


def test_crc_check_value() -> None:
    assert crc16_ccitt_false(b"123456789") == 0x29B1


def test_report() -> None:
    f = decode_frame(vector("report"))
    assert (f.node_hex, f.seq, f.msg_type, f.flags) == (
        "00C0FFEE",
        1,
        MessageType.REPORT,
        FrameFlags.NONE,
    )
    assert f.records == (
        Tilt(-1.5, 0.3),
        WaterDepth(1850),
        Battery(3612),
        Temperature(21.5),
        Link(-97, 7),
    )


def test_event_open() -> None:
    f = decode_frame(vector("event_open"))
    assert (f.node_hex, f.seq, f.msg_type) == ("00C0FFEE", 2, MessageType.EVENT)
    assert f.flags == FrameFlags.NODE_ALARM
    event = f.first(Event)
    assert event == Event(EventCode.COVER_OPENED, age_s=3, value_raw=4520)
    assert event.value == pytest.approx(45.20)
    assert f.first(Tilt) == Tilt(45.2, -1.1)


def test_heartbeat() -> None:
    f = decode_frame(vector("heartbeat"))
    assert (f.node_hex, f.seq, f.msg_type) == ("0000002A", 65535, MessageType.HEARTBEAT)
    assert f.flags == FrameFlags.LOW_BATTERY
    assert f.records == (Battery(3290),)


def test_boot() -> None:
    f = decode_frame(vector("boot"))
    assert (f.node_hex, f.seq, f.msg_type) == ("1234ABCD", 0, MessageType.BOOT)
    assert f.records == (Firmware(2, 1, 517), ResetCause(ResetCauseCode.BROWN_OUT))
    assert str(f.first(Firmware)) == "2.1.517"


def test_report_unknown_tag() -> None:
    f = decode_frame(vector("report_unknown_tag"))
    assert (f.node_hex, f.seq) == ("00C0FFEE", 3)
    assert f.records == (UnknownTlv(0x7F, b"\x01\x02\x03"), WaterDepth(420))
    assert f.unknown_count == 1


def test_report_gas_pressure() -> None:
    f = decode_frame(vector("report_gas_pressure"))
    assert (f.node_hex, f.seq) == ("00000101", 77)
    assert f.records == (
        Gas(GasKind.CH4, 12.5),
        Gas(GasKind.H2S, 3.1),
        Pressure(18.3),
        Vibration(40),
    )
    assert [g.unit for g in f.all(Gas)] == ["%LEL", "ppm"]


@pytest.mark.parametrize("name", sorted(VECTORS))
def test_vectors_reencode_byte_for_byte(name: str) -> None:
    assert encode_frame(decode_frame(vector(name))) == vector(name)
