"""``covergw status``'s cover rows: every device the registry binds to a cover is in its row."""

from __future__ import annotations

from gateway.observation import DeviceRef, Link, Observation, Quantities
from gateway.registry import Cover, OwnerUnit
from gateway.tools.board import NodeBoard, cover_rows

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
