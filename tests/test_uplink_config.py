"""The uplink's new configuration: protocol auto by default, a cluster's addresses, windows."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import MqttProtocol, parse_config
from gateway.errors import ConfigError
from gateway.uplink import windows


def uplink(tmp_path: Path, **table: object):  # type: ignore[no-untyped-def]
    data = {"gateway": {"id": "gw", "state_dir": str(tmp_path)}, "uplink": table}
    return parse_config(data, base_dir=tmp_path).uplink


def test_auto_is_the_default_and_hosts_are_tried_in_order(tmp_path: Path) -> None:
    assert uplink(tmp_path).protocol is MqttProtocol.AUTO
    assert uplink(tmp_path, host="b", port=1884).addresses == (("b", 1884),)
    config = uplink(tmp_path, hosts=["n1:1883", "[::1]:1884"])
    assert config.addresses == (("n1", 1883), ("::1", 1884))


@pytest.mark.parametrize(
    ("table", "reason"),
    [
        ({"hosts": ["n1:1883"], "host": "n2"}, "give host/port or hosts, not both"),
        ({"hosts": []}, "non-empty list"),
        ({"hosts": ["n1"]}, "must be HOST:PORT"),
        ({"hosts": [f"n{i}:1883" for i in range(65)]}, "at most 64"),
    ],
)
def test_bad_hosts_are_refused_with_the_key(
    tmp_path: Path, table: dict[str, object], reason: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        uplink(tmp_path, **table)
    assert raised.value.path == "uplink.hosts"
    assert reason in raised.value.reason


@pytest.mark.parametrize(
    ("max_inflight", "alarm", "telemetry"), [(1, 1, 1), (2, 1, 1), (20, 5, 15), (1000, 250, 750)]
)
def test_alarms_keep_slots_of_their_own(max_inflight: int, alarm: int, telemetry: int) -> None:
    assert windows(max_inflight) == (alarm, telemetry)
