"""Registry device columns: LoRaWAN and NB-IoT devices bound to covers, refused with their line."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.observation import DeviceRef
from gateway.registry import DEVICE_TRANSPORTS, load_registry, parse_registry

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
HEADER = "cover_id,owner_unit,address,node_id,modbus,device,device_id\n"


def test_example_registry_binds_two_devices_to_one_cover() -> None:
    registry, errors = load_registry(DEPLOY / "covers.example.csv")
    assert errors == []
    cover = registry.covers["HZ-XH-000127"]
    assert cover.devices == (
        DeviceRef("em310-tilt", "24e124710c401234"),
        DeviceRef("em400-mud", "24e124713d105678"),
    )
    assert cover.owner_unit.value == "drainage"  # the second row inherits what it left empty
    # A DevEUI is found in any case; an IMEI as written.
    ref, found = registry.device("24E124710C401234") or (None, None)
    assert ref == DeviceRef("em310-tilt", "24e124710c401234")
    assert found is cover
    assert registry.device("24e124713d105678") == (cover.devices[1], cover)
    nb = registry.device("868508064807350")
    assert nb is not None
    assert nb[0] == DeviceRef("em400-mud", "868508064807350")
    assert nb[1].cover_id == "HZ-XH-000128"


def test_device_rows_are_checked_with_line_numbers() -> None:
    text = HEADER + (
        "C1,drainage,A,,,em310-tilt,24e124710c401234\n"  # 2 ok
        "C2,drainage,B,,,em310-tilt,24e124710c401234\n"  # 3 id already on C1
        "C3,drainage,C,,,em310-tilt,868508064807350\n"  # 4 an IMEI for a LoRaWAN-only model
        "C4,drainage,D,,,em999,24e124710c409999\n"  # 5 unknown model
        "C5,drainage,E,,,em400-mud,24e1247\n"  # 6 neither DevEUI nor IMEI
        "C6,drainage,F,,,em400-udl,\n"  # 7 model without id
        "C1,drainage,Elsewhere,,,em400-mud,24e124713d105678\n"  # 8 disagrees with line 2
        "C1,,,,,em400-mud,868508064807351\n"  # 9 ok: NB-IoT EM400 on C1
        "C7,drainage,G,0000ABCD,,scn1,0000abcd\n"  # 10 ok: scn1 device_id = node id
        "C8,drainage,H,00000001,,scn1,00000002\n"  # 11 scn1 ids disagree
        "C9,drainage,I,,,,0000ABCE\n"  # 12 ok: empty device means scn1
        "C9,,,,,dds75-lb,A840414B71876543\n"  # 13 ok
        "C9,,,0000ABCD,,,\n"  # 14 C9 has its node already
    )
    registry, errors = parse_registry(text)
    by_line = {e.line: e.reason for e in errors}
    assert sorted(by_line) == [3, 4, 5, 6, 7, 8, 11, 14]
    assert "already on cover C1" in by_line[3]
    assert "has no NB-IoT version" in by_line[4]
    assert "em999" in by_line[5]
    assert "DevEUI (16 hex digits) or an IMEI (15 digits)" in by_line[6]
    assert "needs a device_id" in by_line[7]
    assert "address 'Elsewhere' differs from line 2" in by_line[8]
    assert "disagree" in by_line[11]
    assert "already has SCN-1 node 0000ABCE" in by_line[14]
    c1 = registry.covers["C1"]
    assert c1.address == "A"
    assert [d.device_id for d in c1.devices] == ["24e124710c401234", "868508064807351"]
    assert registry.covers["C7"].node_id == 0xABCD
    assert registry.by_node[0xABCE].cover_id == "C9"
    assert registry.device("a840414b71876543") is not None
    assert registry.by_node[0xABCE].devices == registry.covers["C9"].devices


def test_model_table_lists_the_issue_models() -> None:
    assert set(DEVICE_TRANSPORTS) == {
        "scn1",
        "em310-tilt",
        "em400-mud",
        "em400-udl",
        "em310-udl",
        "dds75-lb",
    }


def test_check_config_names_the_bad_device_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "covers.csv").write_text(
        HEADER + "C1,drainage,A,,,em310-tilt,24e124710c401234\n"
        "C2,drainage,B,,,em310-tilt,24E124710C401234\n",
        encoding="utf-8",
    )
    config = tmp_path / "covergw.toml"
    config.write_text(
        '[gateway]\nid = "gw"\nstate_dir = "state"\nregistry = "covers.csv"\n', encoding="utf-8"
    )
    assert main(["check-config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "line 3: device_id 24e124710c401234 is already on cover C1: row left out" in err
