"""The framers never trust the wire: resync, chunking, RSSI byte, AT lines."""

from hypothesis import given
from hypothesis import strategies as st

from gateway.errors import RejectReason
from gateway.protocol.codec import encode_frame
from gateway.protocol.framing import AtLineFramer, Item, Received, Rejected, StreamFramer
from gateway.protocol.messages import Frame
from tests.strategies import frames
from tests.vectors import vector


def run(framer: StreamFramer | AtLineFramer, data: bytes, chunk: int = 0) -> list[Item]:
    items: list[Item] = []
    step = chunk or max(1, len(data))
    for i in range(0, len(data), step):
        items += framer.feed(data[i : i + step])
    items += framer.idle()
    return items


def received(items: list[Item]) -> list[Frame]:
    return [i.frame for i in items if isinstance(i, Received)]


@given(
    st.lists(st.tuples(st.binary(max_size=40), frames), max_size=8),
    st.binary(max_size=40),
    st.sampled_from([0, 1, 3, 64]),
)
def test_every_frame_not_overlapped_by_garbage_is_recovered(
    parts: list[tuple[bytes, Frame]], tail: bytes, chunk: int
) -> None:
    """Garbage may contain SYNC bytes and fake LENs; the real frames all come out, in order."""
    stream = b"".join(junk + encode_frame(frame) for junk, frame in parts) + tail
    got = received(run(StreamFramer(), stream, chunk))
    expected = [frame for _, frame in parts]
    # Garbage can by chance hold a whole valid frame; every real one must still be there, in order.
    it = iter(got)
    assert all(any(g == e for g in it) for e in expected)


@given(
    st.lists(st.tuples(frames, st.integers(-255, -1)), max_size=6),
    st.sampled_from([0, 1, 2, 50]),
)
def test_rssi_append_byte_is_read_per_frame(pairs: list[tuple[Frame, int]], chunk: int) -> None:
    stream = b"".join(encode_frame(f) + bytes([rssi + 256]) for f, rssi in pairs)
    items = run(StreamFramer(rssi_append=True), stream, chunk)
    assert [(i.frame, i.rssi_dbm) for i in items if isinstance(i, Received)] == pairs


def test_rssi_append_without_junk_is_exact() -> None:
    stream = vector("report") + b"\xa1" + vector("boot") + b"\x9c"
    items = run(StreamFramer(rssi_append=True), stream, 1)
    assert [(i.frame.seq, i.rssi_dbm) for i in items if isinstance(i, Received)] == [
        (1, -95),
        (0, -100),
    ]


def test_frame_starting_inside_a_rejected_candidate_is_found() -> None:
    """A fake SYNC+LEN swallows the start of a real frame; dropping one byte finds it."""
    real = vector("report")
    stream = b"\xa5\x5a\x10\x01\x02" + real  # candidate LEN 16 overlaps the real frame
    framer = StreamFramer()
    items = run(framer, stream)
    assert received(items) == [received(run(StreamFramer(), real))[0]]
    assert framer.stats.rejected[RejectReason.BAD_CRC] == 1
    assert framer.stats.frames == 1


def test_truncated_candidate_is_resolved_at_idle_gap() -> None:
    framer = StreamFramer()
    assert framer.feed(vector("report")[:20]) == []
    items = framer.idle()
    assert [i.error.reason for i in items if isinstance(i, Rejected)] == [RejectReason.TRUNCATED]
    assert framer.pending == 0
    assert received(framer.feed(vector("report"))) != []


def test_bad_length_counted_and_skipped() -> None:
    framer = StreamFramer()
    items = run(framer, b"\xa5\x5a\x05" + vector("heartbeat"))
    assert framer.stats.rejected[RejectReason.BAD_LENGTH] == 1
    assert len(received(items)) == 1


def test_good_crc_with_unknown_version_consumes_the_frame() -> None:
    from gateway.protocol.codec import encode_body, encode_envelope  # noqa: PLC0415

    frame = received(run(StreamFramer(), vector("heartbeat")))[0]
    v2 = encode_envelope(encode_body(frame, version=2))
    framer = StreamFramer()
    items = run(framer, v2 + vector("boot"))
    assert framer.stats.rejected[RejectReason.UNSUPPORTED_VERSION] == 1
    assert [type(i).__name__ for i in items] == ["Rejected", "Received"]


def test_unknown_tlvs_are_counted() -> None:
    framer = StreamFramer()
    run(framer, vector("report_unknown_tag") * 3)
    assert framer.stats.unknown_tlvs == 3


def test_buffer_stays_bounded_under_endless_noise() -> None:
    framer = StreamFramer()
    for _ in range(200):
        framer.feed(bytes(range(256)) * 4)
        assert framer.pending <= 4096


def at_line(raw: bytes, rssi: int = -87, snr: int = 6) -> bytes:
    return f"+EVT:RXP2P:{rssi}:{snr}:{raw.hex().upper()}\r\n".encode()


def test_at_lines_give_frames_with_rssi_and_snr() -> None:
    framer = AtLineFramer()
    stream = (
        b"OK\r\n"
        + at_line(vector("report"))
        + b"+EVT:RXP2P:RECV_RSSI_SNR -87 6\r\n"
        + b"\x00\xff garbage\r\n"
        + at_line(vector("event_open"), -101, -3)
    )
    items = run(framer, stream, 5)
    got = [(i.frame.seq, i.rssi_dbm, i.snr_db) for i in items if isinstance(i, Received)]
    assert got == [(1, -87, 6.0), (2, -101, -3.0)]
    assert framer.stats.ignored_lines == 3


def test_at_line_with_bad_payload_is_rejected_with_reason() -> None:
    framer = AtLineFramer()
    bad = bytearray(vector("boot"))
    bad[5] ^= 1
    items = run(framer, at_line(bytes(bad)) + b"+EVT:RXP2P:-80:5:A55\r\n")
    assert [i.error.reason for i in items if isinstance(i, Rejected)] == [
        RejectReason.BAD_CRC,
        RejectReason.BAD_HEX,
    ]


@given(st.binary(max_size=2000), st.sampled_from([1, 7, 500]))
def test_at_framer_never_raises_and_stays_bounded(data: bytes, chunk: int) -> None:
    framer = AtLineFramer()
    run(framer, data, chunk)
    assert framer.pending <= AtLineFramer.MAX_LINE


@given(st.binary(max_size=2000), st.sampled_from([1, 7, 500]))
def test_stream_framer_never_raises(data: bytes, chunk: int) -> None:
    framer = StreamFramer(rssi_append=True)
    run(framer, data, chunk)
    assert framer.pending == 0
