"""Hypothesis strategies for valid SCN-1 messages, built from wire-range integers."""

from hypothesis import strategies as st

from gateway.protocol import scn1
from gateway.protocol.codec import encode_body
from gateway.protocol.messages import (
    Battery,
    Event,
    EventCode,
    Firmware,
    Frame,
    FrameFlags,
    Gas,
    GasKind,
    Link,
    MessageType,
    Pressure,
    Record,
    ResetCause,
    ResetCauseCode,
    Temperature,
    Tilt,
    UnknownTlv,
    Vibration,
    WaterDepth,
)

i16 = st.integers(-32768, 32767)
u16 = st.integers(0, 0xFFFF)
i8 = st.integers(-128, 127)
u8 = st.integers(0, 255)
KNOWN_TAGS = {int(t) for t in scn1.Tag}

records: st.SearchStrategy[Record] = st.one_of(
    st.builds(lambda x, y: Tilt(x / 100, y / 100), i16, i16),
    st.builds(lambda mm: WaterDepth(None if mm == 0xFFFF else mm), u16),
    st.builds(Battery, u16),
    st.builds(lambda t: Temperature(t / 10), i16),
    st.builds(lambda k, v: Gas(k, v / 10), st.sampled_from(GasKind), u16),
    st.builds(Link, i8, i8),
    st.builds(Event, st.sampled_from(EventCode), st.integers(0, 0xFFFFFFFF), i16),
    st.builds(Firmware, u8, u8, u16),
    st.builds(ResetCause, st.sampled_from(ResetCauseCode)),
    st.builds(lambda p: Pressure(p / 10), u16),
    st.builds(Vibration, u16),
    st.builds(
        UnknownTlv,
        u8.filter(lambda t: t not in KNOWN_TAGS),
        st.binary(max_size=20),
    ),
)


def _fits(frame: Frame) -> bool:
    return len(encode_body(frame)) <= scn1.MAX_LEN


frames: st.SearchStrategy[Frame] = st.builds(
    Frame,
    node_id=st.integers(0, 0xFFFFFFFF),
    seq=u16,
    msg_type=st.sampled_from(MessageType),
    flags=st.builds(FrameFlags, st.integers(0, 7)),
    records=st.lists(records, max_size=12).map(tuple),
).filter(_fits)
