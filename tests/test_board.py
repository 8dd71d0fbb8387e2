"""``covergw status``'s cover rows: every device the registry binds to a cover is in its row."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.observation import DeviceRef, Link, Observation, Quantities
from gateway.registry import Cover, OwnerUnit
from gateway.tools.board import NodeBoard, Seen, cover_rows

EM310 = DeviceRef("em310-tilt", "24e124710c401234")


def test_a_lorawan_device_shows_in_its_covers_row_not_as_a_stranger() -> None:
    cover = Cover("HZ-1", OwnerUnit.DRAINAGE, node_id=0x00C0FFEE, devices=(EM310,))
    board = NodeBoard()
    board.observation(
        Observation(
            EM310,
            "chirpstack",
            100.0,
            Quantities(battery_pct=97),
            link=Link(rssi_dbm=-97.0, snr_db=7.5),
        )
    )
    rows = cover_rows([cover], board, [], {}, now=110.0)
    assert len(rows) == 1  # no unregistered row for the EM310
    (row,) = rows
    assert [d["device"] for d in row["devices"]] == [
        "scn1:00C0FFEE",
        "em310-tilt:24e124710c401234",
    ]
    assert row["battery_pct"] == 97
    assert row["link"] == "RSSI -97 dBm, SNR 7.5 dB"
    assert row["last_heard"] is not None


def _slave_as_put(board: NodeBoard, bus: str, address: int, at: float, failing: str | None) -> None:
    """``NodeBoard.slave`` as it was written before its one-step form: through ``_put``."""
    key = f"modbus:{bus}:{address}"
    previous = board.get(key)
    heard_at = at if failing is None or previous is None else previous.at
    board._put(key, Seen(heard_at, bus, failing=failing))


_polls = st.lists(
    st.tuples(
        st.sampled_from([("rs485-0", 1), ("rs485-0", 80), ("rs485-1", 1)]),
        st.floats(0, 1e9),
        st.none() | st.sampled_from(["no reply", "CRC error"]),
        st.none() | st.floats(2000, 4200),  # a battery another source gave the key, kept
    ),
    max_size=30,
)


@given(_polls, st.integers(1, 4))
def test_a_poll_on_the_board_is_what_put_made_of_it(
    polls: list[tuple[tuple[str, int], float, str | None, float | None]], limit: int
) -> None:
    board, reference = NodeBoard(limit=limit), NodeBoard(limit=limit)
    for (bus, address), at, failing, mv in polls:
        if mv is not None:
            for b in (board, reference):
                b._put(f"modbus:{bus}:{address}", Seen(at, bus, battery_mv=mv))
        board.slave(bus, address, at, failing)
        _slave_as_put(reference, bus, address, at, failing)
        assert list(board.devices()) == list(reference.devices())  # the same order (LRU)
        assert [board.get(k) for k in board.devices()] == [
            reference.get(k) for k in reference.devices()
        ]
