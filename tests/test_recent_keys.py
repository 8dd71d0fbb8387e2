"""The inputs' repeat window (LoRaWAN deduplicationIds, NB-IoT frames) stays bounded."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from gateway.drivers.observe import RecentKeys


def test_the_oldest_key_is_forgotten_first() -> None:
    recent: RecentKeys[str] = RecentKeys(2)
    for key in ("a", "b", "c"):
        recent.add(key)
    assert "a" not in recent
    assert "b" in recent
    assert "c" in recent


@given(st.lists(st.binary(max_size=4), max_size=200), st.integers(1, 16))
def test_never_more_than_the_window_and_always_the_latest(keys: list[bytes], limit: int) -> None:
    recent: RecentKeys[bytes] = RecentKeys(limit)
    for key in keys:
        recent.add(key)
        assert key in recent
        assert len(recent) <= limit
