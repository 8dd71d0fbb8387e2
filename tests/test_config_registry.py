"""Configuration is refused with the key and the reason; the registry loads what it can."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.config import SlaveRole, parse_config
from gateway.errors import ConfigError
from gateway.registry import OwnerUnit, parse_registry

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def base() -> dict[str, Any]:
    return {"gateway": {"id": "gw-1", "state_dir": "/tmp/covergw-test"}}


def refused(patch: dict[str, Any], tmp_path: Path) -> ConfigError:
    data = base()
    for key, value in patch.items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=tmp_path)
    return info.value


@pytest.mark.parametrize(
    ("patch", "path", "reason"),
    [
        ({"uplink": {"port": 70000}}, "uplink.port", "must be 1–65535, got 70000"),
        ({"uplink": {"protocol": "4"}}, "uplink.protocol", "must be one of auto, 5, 3.1.1"),
        ({"uplink": {"hots": "x"}}, "uplink.hots", "unknown key"),
        ({"gateway": {"id": "a/b"}}, "gateway.id", "without / + #"),
        (
            {"radio": [{"name": "r", "port": "/dev/x", "dialect": "lora"}]},
            "radio[0].dialect",
            "one of",
        ),
        ({"radio": [{"name": "r"}]}, "radio[0].port", "is required"),
        ({"udp": [{"name": "u", "bind": "0.0.0.0"}]}, "udp[0].bind", "HOST:PORT"),
        (
            {
                "modbus": [
                    {"name": "m", "port": "/dev/x", "slaves": [{"address": 1, "profile": "nope"}]}
                ]
            },
            "modbus[0].slaves[0].profile",
            "unknown profile",
        ),
        (
            {
                "modbus": [
                    {
                        "name": "m",
                        "port": "/dev/x",
                        "slaves": [{"address": 300, "profile": "qdy30a_level"}],
                    }
                ]
            },
            "modbus[0].slaves[0].address",
            "must be 1–247",
        ),
        ({"alarms": {"tilt_deg": -1}}, "alarms.tilt_deg", "must be 0.5–90.0"),
        ({"alarms": {"kind": {"rain": {"tilt_dg": 3}}}}, "alarms.kind.rain.tilt_dg", "unknown key"),
        (
            {"uplink": {"tls": {"enabled": True, "ca_file": "missing.pem"}}},
            "uplink.tls.ca_file",
            "no such file",
        ),
    ],
)
def test_refusals_name_key_and_reason(
    patch: dict[str, Any], path: str, reason: str, tmp_path: Path
) -> None:
    err = refused(patch, tmp_path)
    assert err.path == path
    assert reason in err.reason


def test_shipped_example_config_is_valid(tmp_path: Path) -> None:
    data = tomllib.loads((DEPLOY / "covergw.toml").read_text())
    data["uplink"]["tls"]["enabled"] = False  # its certificate files live on the box
    del data["uplink"]["password_file"]
    data["gateway"]["registry"] = str(DEPLOY / "covers.example.csv")
    config = parse_config(data, base_dir=DEPLOY)
    assert config.topic_root == "covers/gw-hz-0001"
    assert [s.role for s in config.modbus[0].slaves] == [SlaveRole.TILT, SlaveRole.WATER_LEVEL]
    assert config.kind_thresholds["rainwater"]["water_high_mm"] == 800
    assert config.uplink.password is None


def test_password_never_in_repr(tmp_path: Path) -> None:
    data = base()
    data["uplink"] = {"username": "gw", "password": "s3cret-value"}
    config = parse_config(data, base_dir=tmp_path)
    assert config.uplink.password == "s3cret-value"
    assert "s3cret-value" not in repr(config)


def test_registry_chinese_text_aliases_and_row_errors() -> None:
    text = (
        "\ufeffcover_id,owner_unit,node_id,modbus,address,latitude,longitude,maintenance,tilt_deg\n"
        "HZ-1,排水,00C0FFEE,,西湖区文三路 88 号,30.27,120.15,否,\n"
        "HZ-2,gas,zz,,,,,,\n"
        "HZ-3,martians,,,,,,,\n"
        "HZ-4,Street Lighting,,rs485-0:0x50 rs485-0:1,,91,,,\n"
        "HZ-5,power,00C0FFEE,,,,,,\n"
        ",power,,,,,,,\n"
        "HZ-6,路灯,0000002A,bus1:3,,,,是,10\n"
    )
    registry, errors = parse_registry(text)
    assert sorted(registry.covers) == ["HZ-1", "HZ-6"]
    assert registry.covers["HZ-1"].owner_unit is OwnerUnit.DRAINAGE
    assert registry.covers["HZ-1"].address == "西湖区文三路 88 号"
    hz6 = registry.covers["HZ-6"]
    assert (hz6.owner_unit, hz6.maintenance, hz6.overrides) == (
        OwnerUnit.STREET_LIGHTING,
        True,
        {"tilt_deg": 10.0},
    )
    assert registry.by_slave[("bus1", 3)] is hz6
    assert [(e.line, e.reason.split(" ")[0]) for e in errors] == [
        (3, "node_id"),
        (4, "owner_unit"),
        (5, "latitude"),
        (6, "node"),
        (7, "cover_id"),
    ]


def test_registry_example_loads() -> None:
    registry, errors = parse_registry((DEPLOY / "covers.example.csv").read_text(encoding="utf-8"))
    assert errors == []
    assert len(registry.covers) == 6
