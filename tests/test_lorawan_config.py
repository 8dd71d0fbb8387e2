"""``[[lorawan]]`` and ``[[tcp]]`` are refused with the key and the reason, like every table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.config import MqttProtocol, parse_config
from gateway.errors import ConfigError


def config(**tables: Any) -> dict[str, Any]:
    return {"gateway": {"id": "gw-1", "state_dir": "/tmp/covergw-test"}, **tables}


def test_defaults_and_credentials(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s3cret\n")
    (tmp_path / "secret").chmod(0o600)  # a secret others can read is refused
    parsed = parse_config(
        config(lorawan=[{"name": "cs", "username": "gw", "password_file": "secret"}]),
        base_dir=tmp_path,
    )
    (lw,) = parsed.lorawan
    assert (lw.host, lw.port, lw.protocol) == ("127.0.0.1", 1883, MqttProtocol.V5)
    assert lw.topic == "application/+/device/+/event/+"
    assert lw.client_id == "covergw-gw-1-cs"
    assert lw.password == "s3cret"
    assert "s3cret" not in repr(lw)


@pytest.mark.parametrize(
    ("tables", "path", "reason"),
    [
        ({"lorawan": [{"name": "cs", "port": 0}]}, "lorawan[0].port", "1–65535"),
        ({"lorawan": [{"name": "cs", "topic": "a/#/b"}]}, "lorawan[0].topic", "topic filter"),
        (
            {"lorawan": [{"name": "cs", "downlink_topic": "application/x/command/down"}]},
            "lorawan[0].downlink_topic",
            "{dev_eui}",
        ),
        (
            {"lorawan": [{"name": "cs", "max_event_bytes": 10}]},
            "lorawan[0].max_event_bytes",
            "1024",
        ),
        ({"lorawan": [{"name": "cs", "qos": 2}]}, "lorawan[0].qos", "unknown key"),
        (
            {"lorawan": [{"name": "cs", "tls": {"enabled": True}}]},
            "lorawan[0].tls.ca_file",
            "required",
        ),
        (
            {"lorawan": [{"name": "cs", "password": "a", "password_file": "/etc/hostname"}]},
            "lorawan[0].password_file",
            "not both",
        ),
        ({"tcp": [{"name": "t", "bind": "0.0.0.0:1", "format": "scn1"}]}, "tcp[0].format", "only"),
        (
            {"tcp": [{"name": "t", "bind": "0.0.0.0:1", "max_frame_bytes": 20}]},
            "tcp[0].max_frame_bytes",
            "86",
        ),
        (
            {"udp": [{"name": "u", "bind": "127.0.0.1:1", "format": "lora"}]},
            "udp[0].format",
            "one of",
        ),
        (
            {"udp": [{"name": "x", "bind": "127.0.0.1:1"}], "lorawan": [{"name": "x"}]},
            "radio/udp/modbus/lorawan/tcp",
            "own name",
        ),
    ],
)
def test_refused_with_key_and_reason(
    tables: dict[str, Any], path: str, reason: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(config(**tables), base_dir=tmp_path)
    assert info.value.path == path
    assert reason in info.value.reason
