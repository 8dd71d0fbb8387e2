"""Shipped scenarios load; a bad scenario is refused with the key that is wrong."""

from __future__ import annotations

from typing import Any

import pytest

from firmware_sim.__main__ import resolve_scenario, shipped_scenarios
from firmware_sim.scenario import load_scenario, parse_scenario
from gateway.errors import ConfigError


@pytest.mark.parametrize("name", shipped_scenarios())
def test_shipped_scenario_loads(name: str) -> None:
    scenario = load_scenario(resolve_scenario(name))
    assert scenario.timeline
    assert all(
        a.at_s <= b.at_s for a, b in zip(scenario.timeline, scenario.timeline[1:], strict=False)
    )


def test_city_block_has_hundreds_of_covers() -> None:
    scenario = load_scenario(resolve_scenario("city_block"))
    assert len(scenario.nodes) >= 300
    assert len({n.node_id for n in scenario.nodes}) == len(scenario.nodes)


BASE: dict[str, Any] = {
    "scenario": {"name": "t", "duration_s": 5},
    "radio": [{"name": "r"}],
    "nodes": [{"id": "00000001", "link": "r"}],
}


@pytest.mark.parametrize(
    ("patch", "path"),
    [
        ({"radio": [{"name": "r", "dialect": "morse"}]}, "radio[0].dialect"),
        ({"nodes": [{"id": "xyz", "link": "r"}]}, "nodes[0].id"),
        ({"nodes": [{"id": "1", "link": "nope"}]}, "nodes[0].link"),
        (
            {"timeline": [{"at_s": 1, "do": "set", "node": "00000002", "battery_mv": 1}]},
            "timeline[0].node",
        ),
        ({"timeline": [{"at_s": 1, "do": "event", "node": "1"}]}, "timeline[0].event"),
        ({"timeline": [{"at_s": 1, "do": "set", "node": "1", "batery_mv": 1}]}, "timeline[0]"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_scenario_names_the_key(patch: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_scenario({**BASE, **patch})
    assert info.value.path.startswith(path)
