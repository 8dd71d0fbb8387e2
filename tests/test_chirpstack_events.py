"""ChirpStack event parser: simulator events round-trip; hostile bytes raise only its error."""

from __future__ import annotations

import contextlib
import json

from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_sim.netserver import (
    ack_event,
    event_topic,
    join_event,
    status_event,
    txack_event,
    up_event,
)
from gateway.protocol.chirpstack import (
    AckEvent,
    ChirpstackError,
    EventKind,
    JoinEvent,
    StatusEvent,
    TxAckEvent,
    UpEvent,
    parse_event,
)

EUIS = st.text("0123456789abcdef", min_size=16, max_size=16)
TOPICS = st.sampled_from([k.value for k in EventKind]).flatmap(
    lambda kind: EUIS.map(lambda eui: event_topic(eui, kind))
)


def dumped(body: dict[str, object]) -> bytes:
    return json.dumps(body).encode()


@given(
    eui=EUIS,
    data=st.binary(max_size=242),
    f_port=st.integers(1, 223),
    f_cnt=st.integers(0, 2**32 - 1),
    rx=st.lists(st.tuples(st.integers(-140, 0), st.floats(-20, 15, allow_nan=False)), max_size=5),
)
def test_up_round_trip(
    eui: str, data: bytes, f_port: int, f_cnt: int, rx: list[tuple[int, float]]
) -> None:
    body = up_event(eui, data, f_port=f_port, f_cnt=f_cnt, rx=rx)
    event = parse_event(event_topic(eui, "up"), dumped(body), max_bytes=1 << 20)
    assert isinstance(event, UpEvent)
    assert (event.device.dev_eui, event.data, event.f_port, event.f_cnt) == (
        eui,
        data,
        f_port,
        f_cnt,
    )
    assert event.deduplication_id == body["deduplicationId"]
    assert event.gateways == len(rx)
    if rx:
        assert (event.rssi_dbm, event.snr_db) == max((float(r), s) for r, s in rx)
    else:
        assert event.rssi_dbm is None


@given(
    eui=EUIS,
    level=st.floats(0, 100, allow_nan=False),
    external=st.booleans(),
    unavailable=st.booleans(),
    item=st.uuids().map(str),
    f_cnt_down=st.integers(0, 2**32 - 1),
    acknowledged=st.booleans(),
)
def test_other_events_round_trip(
    eui: str,
    level: float,
    external: bool,
    unavailable: bool,
    item: str,
    f_cnt_down: int,
    acknowledged: bool,
) -> None:
    status = parse_event(
        event_topic(eui, "status"),
        dumped(
            status_event(eui, battery_level=level, external_power=external, unavailable=unavailable)
        ),
        max_bytes=1 << 16,
    )
    assert isinstance(status, StatusEvent)
    assert status.battery_pct == (None if external or unavailable else level)
    join = parse_event(event_topic(eui, "join"), dumped(join_event(eui)), max_bytes=1 << 16)
    assert isinstance(join, JoinEvent)
    assert join.device.dev_eui == eui
    txack = parse_event(
        event_topic(eui, "txack"), dumped(txack_event(eui, item, f_cnt_down)), max_bytes=1 << 16
    )
    assert isinstance(txack, TxAckEvent)
    assert (txack.queue_item_id, txack.f_cnt_down) == (item, f_cnt_down)
    ack = parse_event(
        event_topic(eui, "ack"),
        dumped(ack_event(eui, item, f_cnt_down, acknowledged=acknowledged)),
        max_bytes=1 << 16,
    )
    assert isinstance(ack, AckEvent)
    assert (ack.queue_item_id, ack.acknowledged) == (item, acknowledged)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=30,
)


@settings(max_examples=200)
@given(topic=TOPICS, payload=st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_the_parsers_error(topic: str, payload: bytes) -> None:
    with contextlib.suppress(ChirpstackError):
        parse_event(topic, payload, max_bytes=512)


@settings(max_examples=200)
@given(
    topic=TOPICS,
    doc=JSON,
    eui=EUIS,
    mutate=st.dictionaries(
        st.sampled_from(
            [
                "deduplicationId",
                "fCnt",
                "fPort",
                "data",
                "rxInfo",
                "deviceInfo",
                "queueItemId",
                "acknowledged",
                "batteryLevel",
                "externalPowerSource",
                "margin",
                "fCntDown",
                "level",
            ]
        ),
        JSON,
        max_size=4,
    ),
)
def test_arbitrary_json_raises_only_the_parsers_error(
    topic: str, doc: object, eui: str, mutate: dict[str, object]
) -> None:
    # A well-formed event with fields replaced by anything, and JSON of any shape.
    body = {**up_event(eui, b"\x01", f_port=85, f_cnt=1), **mutate}
    for payload in (dumped(body), json.dumps(doc).encode()):
        with contextlib.suppress(ChirpstackError):
            parse_event(topic, payload, max_bytes=1 << 16)
