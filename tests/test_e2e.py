"""The whole gateway, the simulator and a real Mosquitto: asserts on what the broker delivered."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.__main__ import resolve_scenario
from firmware_sim.runner import ScenarioRunner
from firmware_sim.scenario import Scenario, load_scenario
from firmware_sim.wiring import gateway_config
from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.protocol.messages import MessageType
from tests.harness import Broker, Collector, free_udp_port

REGISTRY = """\
cover_id,name,owner_unit,cover_kind,address,latitude,longitude,node_id,modbus,sensor_depth_mm
HZ-0001,文三路雨水井,排水,rainwater,西湖区文三路 88 号,30.2741,120.1551,00C0FFEE,rs485-0:0x50,
HZ-0002,污水井,drainage,sewage,Lane 2,30.2743,120.1556,00000101,rs485-0:1,2500
HZ-0003,通信人井,telecom,telecom,学院路 14 号,,,0000002A,,
"""


@dataclass
class Rig:
    broker: Broker
    collector: Collector
    sim: ScenarioRunner
    gateway: Gateway
    stop: asyncio.Event
    task: asyncio.Task[None]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    with Broker(tmp_path / "broker") as b:
        yield b


async def start_rig(
    tmp_path: Path,
    broker: Broker,
    scenario: Scenario,
    *,
    speed: float,
    alarms: dict[str, Any] | None = None,
    **config: Any,
) -> tuple[ScenarioRunner, Gateway, asyncio.Event, asyncio.Task[None]]:
    udp_port = free_udp_port()
    sim = ScenarioRunner(scenario, speed=speed, udp_target=("127.0.0.1", udp_port))
    await sim.__aenter__()
    data = gateway_config(
        tmp_path,
        broker_port=broker.port,
        endpoints=sim.endpoints(),
        scenario=scenario,
        registry_csv=REGISTRY,
        udp_port=udp_port,
        alarms=alarms,
        **config,
    )
    gateway = Gateway(parse_config(data, base_dir=tmp_path))
    stop = asyncio.Event()
    task = asyncio.create_task(gateway.run(stop))
    await asyncio.sleep(0.3)  # ports open before the first frame
    return sim, gateway, stop, task


async def finish(sim: ScenarioRunner, stop: asyncio.Event, task: asyncio.Task[None]) -> None:
    stop.set()
    await asyncio.wait_for(task, 15)
    await sim.__aexit__(None, None, None)


def shipped(name: str) -> Scenario:
    return load_scenario(resolve_scenario(name))


async def run_scenario(
    tmp_path: Path, broker: Broker, name: str, *, speed: float, settle_s: float = 1.5, **kw: Any
) -> tuple[Collector, ScenarioRunner, Gateway]:
    async with Collector(broker.port) as collector:
        sim, gateway, stop, task = await start_rig(
            tmp_path, broker, shipped(name), speed=speed, **kw
        )
        await sim.run()
        await sim.quiesce()
        await asyncio.sleep(settle_s)
        await finish(sim, stop, task)
        await asyncio.sleep(0.3)
    assert collector.errors == []  # every message matched its JSON Schema
    return collector, sim, gateway


async def test_lorry_over_covers_raises_nothing(tmp_path: Path, broker: Broker) -> None:
    collector, _, _ = await run_scenario(tmp_path, broker, "lorry", speed=1.0)
    assert [a for a in collector.alarm_summary() if a[1] == "tilt"] == []
    readings = collector.readings()
    tilts = [r["derived"].get("tilt_deg") for r in readings if r["source"]["type"] == "modbus"]
    assert tilts  # the wired inclinometer was read and forwarded
    spike = [
        r
        for r in readings
        if r["source"].get("msg_type") == "REPORT" and r["derived"]["tilt_deg"] > 15
    ]
    assert spike  # the radio node did report during the spike, and still no alarm


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_cover_opened_and_closed(tmp_path: Path, broker: Broker, protocol: str) -> None:
    collector, _, _ = await run_scenario(
        tmp_path, broker, "cover_opened", speed=4.0, uplink={"protocol": protocol}
    )
    summary = collector.alarm_summary()
    assert summary == [
        ("HZ-0001", "cover_open", None, "raised"),
        ("HZ-0001", "cover_open", None, "cleared"),
    ]
    raised, cleared = collector.alarms()
    assert raised["alarm_id"] == cleared["alarm_id"]
    assert raised["cover"]["owner_unit"] == "drainage"
    assert raised["cover"]["address"] == "西湖区文三路 88 号"
    assert raised["severity"] == "critical"
    assert raised["source"]["node"] == "00C0FFEE"
    # The EVENT was sent three times and heard once more as a duplicate: one reading.
    events = [r for r in collector.readings() if r["source"].get("msg_type") == "EVENT"]
    assert len(events) == 2  # opened, closed
    stats = collector.of("stats")[-1]
    assert stats["edge"]["duplicates"] >= 3


async def test_flood_rises_and_falls(tmp_path: Path, broker: Broker) -> None:
    collector, _, _ = await run_scenario(
        tmp_path, broker, "flood", speed=4.0, alarms={"hold_s": 0.5}
    )
    summary = collector.alarm_summary()
    assert ("HZ-0002", "water_high", None, "raised") in summary
    assert ("HZ-0002", "water_high", None, "cleared") in summary
    assert ("HZ-0002", "water_high", "rs485-0:1", "raised") in summary
    assert ("HZ-0002", "water_overflow", "rs485-0:1", "raised") in summary
    assert ("HZ-0002", "water_overflow", "rs485-0:1", "cleared") in summary
    assert (
        "HZ-0002",
        "water_overflow",
        None,
        "raised",
    ) not in summary  # the node's water stopped at 250 mm
    overflow = next(a for a in collector.alarms() if a["kind"] == "water_overflow")
    assert overflow["value"] <= 200
    assert overflow["source"] == {"type": "modbus", "bus": "rs485-0", "slave": 1}


async def test_faults_change_counters_and_alarms_never_the_flow(
    tmp_path: Path, broker: Broker
) -> None:
    collector, sim, _ = await run_scenario(
        tmp_path,
        broker,
        "faults",
        speed=3.0,
        settle_s=3.0,
        alarms={"offline_after_s": 2.5, "report_count": 2},
    )
    summary = collector.alarm_summary()
    assert ("HZ-0001", "low_battery", None, "raised") in summary
    # Not registered: nobody expects to hear from it again, so it never goes offline.
    assert not any(a[0] == "1234ABCD" and a[1] == "node_offline" for a in summary)
    assert ("HZ-0002", "sensor_fault", "rs485-0:1", "raised") in summary
    assert ("HZ-0002", "sensor_fault", "rs485-0:1", "cleared") in summary
    assert ("HZ-0002", "node_offline", None, "raised") in summary  # registered, never heard
    assert any(
        r["registered"] is False and r["cover"] is None and r["source"]["node"] == "1234ABCD"
        for r in collector.readings()
    )
    stats = collector.of("stats")[-1]
    lora0 = stats["ports"]["lora0"]
    assert lora0["skipped_bytes"] > 0
    assert (
        lora0["rejected_bad_crc"] + lora0["rejected_bad_length"] + lora0["rejected_truncated"] > 0
    )
    assert stats["ports"]["lora1"]["ignored_lines"] > 0
    assert stats["edge"]["lost_frames"] >= 2  # two frames of 0000002A dropped over the air
    # Noise on lora0 and the dead slave stopped nothing: every frame of the other
    # nodes reached the broker, across the seq wrap and the reboot.
    got = {
        (r["source"]["node"], r["source"]["seq"], r["source"]["msg_type"])
        for r in collector.readings()
        if r["source"]["type"] == "node"
    }
    sent = {(f"{f.node_id:08X}", f.seq, f.msg_type.name) for f in sim.sent}
    assert sent <= got
    assert any(s[0] == "0000002A" and s[2] == "BOOT" for s in got)
    assert {
        r["source"]["slave"] for r in collector.readings() if r["source"]["type"] == "modbus"
    } == {0x50, 1}


async def test_broker_outage_loses_nothing_and_alarms_go_first(
    tmp_path: Path, broker: Broker
) -> None:
    scenario = load_scenario(resolve_scenario("cover_opened"))
    data = {
        "scenario": {"name": "outage", "duration_s": 12, "seed": 4},
        "radio": [{"name": "lora0", "rssi_append": True}],
        "node_groups": [
            {"first_id": "00A00000", "count": 40, "link": "lora0", "report_interval_s": 0.4}
        ],
        "nodes": [{"id": "00C0FFEE", "link": "lora0", "report_interval_s": 1}],
        "timeline": [
            {"at_s": 5, "do": "set", "node": "00C0FFEE", "tilt_deg": [50.0, 0.0]},
            {"at_s": 5.2, "do": "event", "node": "00C0FFEE", "event": "cover_opened", "retries": 1},
        ],
    }
    from firmware_sim.scenario import parse_scenario  # noqa: PLC0415

    scenario = parse_scenario(data)
    async with Collector(broker.port) as collector:
        sim, gateway, stop, task = await start_rig(tmp_path, broker, scenario, speed=1.0)
        run = asyncio.create_task(sim.run())
        await asyncio.sleep(3)
        broker.stop()
        outage_started = len(collector.messages)
        await asyncio.sleep(5)  # the cover is opened during the outage
        queued = gateway.queue.stats()
        broker.start()
        await run
        await sim.quiesce()
        distinct = len({(f.node_id, f.seq) for f in sim.sent})
        await collector.wait_for(lambda: len(collector.readings()) >= distinct, timeout=30)
        await finish(sim, stop, task)
    assert collector.errors == []
    assert queued.depth  # the outage really held messages back
    sent = {(f"{f.node_id:08X}", f.seq) for f in sim.sent}
    got = [(r["source"]["node"], r["source"]["seq"]) for r in collector.readings()]
    assert set(got) == sent  # every reading, none missing
    assert len(got) == len(set(got))  # and none twice after de-duplication
    by_node: dict[str, list[int]] = {}
    for node, seq in got:  # arrival order
        by_node.setdefault(node, []).append(seq)
    assert all(seqs == sorted(seqs) for seqs in by_node.values())  # in order per cover
    assert collector.of("stats")[-1]["uplink"]["reconnects"] >= 1
    # After the outage, the alarm raised during it came before the backlog of readings.
    after = collector.messages[outage_started:]
    kinds = [m.topic.rsplit("/", 1)[-1] for m in after if m.topic.endswith(("alarm", "telemetry"))]
    assert kinds[0] == "alarm"
    assert ("HZ-0001", "cover_open", None, "raised") in collector.alarm_summary()
    assert MessageType.EVENT.name in {r["source"]["msg_type"] for r in collector.readings()}


async def test_alarm_state_survives_restart(tmp_path: Path, broker: Broker) -> None:
    """An active alarm is neither raised again nor forgotten across a restart."""
    from firmware_sim.scenario import parse_scenario  # noqa: PLC0415

    node = {"id": "00C0FFEE", "link": "lora0", "report_interval_s": 0.5, "boot_on_start": False}
    opened = {
        "scenario": {"name": "open", "duration_s": 3, "seed": 4},
        "radio": [{"name": "lora0"}],
        "nodes": [node],
        "timeline": [
            {"at_s": 1, "do": "set", "node": "00C0FFEE", "tilt_deg": [50.0, 0.0]},
            {"at_s": 1.1, "do": "event", "node": "00C0FFEE", "event": "cover_opened"},
        ],
    }
    still_open_then_closed = {
        "scenario": {"name": "closed", "duration_s": 3, "seed": 4},
        "radio": [{"name": "lora0"}],
        "nodes": [{**node, "tilt_deg": [50.0, 0.0]}],
        "timeline": [
            {"at_s": 2, "do": "set", "node": "00C0FFEE", "tilt_deg": [0.0, 0.0]},
            {"at_s": 2.1, "do": "event", "node": "00C0FFEE", "event": "cover_closed"},
        ],
    }
    async with Collector(broker.port) as collector:
        for data in (opened, still_open_then_closed):
            sim, gateway, stop, task = await start_rig(
                tmp_path, broker, parse_scenario(data), speed=1.0
            )
            if data is still_open_then_closed:
                assert [a["kind"] for a in gateway.engine.active_alarms()] == ["cover_open"]
            await sim.run()
            await sim.quiesce()
            await asyncio.sleep(0.5)
            await finish(sim, stop, task)
        await asyncio.sleep(0.5)
    assert collector.alarm_summary() == [
        ("HZ-0001", "cover_open", None, "raised"),
        ("HZ-0001", "cover_open", None, "cleared"),
    ]
    raised, cleared = collector.alarms()
    assert raised["alarm_id"] == cleared["alarm_id"]


async def test_a_polled_crossing_reaches_the_broker_at_once_while_the_pipeline_sleeps(
    tmp_path: Path, broker: Broker
) -> None:
    """Polled readings that change nothing are judged without waking the pipeline, which
    sleeps until its next deadline (up to 10 s), and once known quiet are kept at the bus
    (its poll thread counts them); the reading that crosses a threshold is handed on and
    wakes it, and its alarm is at the broker within a poll or two, not at that deadline."""
    scenario = calm_level()

    def overflow() -> list[dict[str, Any]]:
        return [a for a in collector.alarms() if a["kind"] == "water_overflow"]

    async with Collector(broker.port) as collector:
        sim, gateway, stop, task = await start_rig(
            tmp_path, broker, scenario, speed=1.0, alarms={"hold_s": 0}
        )
        try:
            await collector.wait_for(lambda: bool(collector.readings()), 10)  # the first poll's
            await kept_at_the_bus(gateway, 4)  # polls at 0.25 s that change nothing
            assert gateway.engine.active_alarms() == []
            sim.buses["rs485-0"].slave(1).level = 2.35  # 150 mm below the cover
            crossed = time.monotonic()
            await collector.wait_for(lambda: bool(overflow()), 10)
            took = time.monotonic() - crossed
            # Published while committed (the short path): on disk too, not at the next turn.
            async with asyncio.timeout(10):
                while gateway.stats_payload()["queue"]["pending_in_memory"]:
                    await asyncio.sleep(0.01)
            committed = time.monotonic() - crossed
        finally:
            await finish(sim, stop, task)
    assert took < 1.5, f"the alarm took {took:.2f} s"
    assert committed < 1.5, f"the alarm was committed after {committed:.2f} s"
    assert overflow()[0]["source"] == {"type": "modbus", "bus": "rs485-0", "slave": 1}
    assert len([r for r in collector.readings() if r["source"]["type"] == "modbus"]) <= 2
    assert collector.errors == []


def calm_level() -> Scenario:
    """HZ-0002's level transmitter alone, 2.3 m below the cover, polled every 0.25 s."""
    from firmware_sim.scenario import parse_scenario  # noqa: PLC0415

    level = {"model": "qdy30a_level", "address": 1, "level": 0.2, "decimals": 3}
    return parse_scenario(
        {
            "scenario": {"name": "calm", "duration_s": 30, "seed": 5},
            "buses": [{"name": "rs485-0", "slaves": [level]}],
        }
    )


async def kept_at_the_bus(gateway: Gateway, count: int) -> None:
    """Until the bus has kept COUNT more quiet repeats of slave 1 from the engine."""
    (bus,) = [d for d in gateway.drivers if d.name == "rs485-0"]

    def kept() -> int:
        return int(bus.status()["slaves"]["1"]["kept_as_quiet"])

    target = kept() + count
    async with asyncio.timeout(10):
        while kept() < target:
            await asyncio.sleep(0.05)


async def test_a_command_reaches_a_sensor_whose_repeats_the_bus_keeps(
    tmp_path: Path, broker: Broker
) -> None:
    """New thresholds by the platform's command: the bus stops keeping the level's repeats
    (the engine's epoch moved), the next poll is judged, and its alarm is at the broker
    within a poll or two, not when the keeping would have lapsed (up to 10 s)."""
    import aiomqtt  # noqa: PLC0415

    async with Collector(broker.port) as collector:
        sim, gateway, stop, task = await start_rig(
            tmp_path, broker, calm_level(), speed=1.0, alarms={"hold_s": 0}
        )
        try:
            await collector.wait_for(lambda: bool(collector.readings()), 10)
            await kept_at_the_bus(gateway, 4)
            assert collector.alarms() == []
            root = gateway.engine.topic_root
            async with aiomqtt.Client("127.0.0.1", broker.port) as platform:
                await platform.subscribe(f"{root}/cmd/response", qos=1)
                request = {
                    "request_id": "lower-it",
                    "cmd": "set_thresholds",  # 2.3 m below the cover is now "high"
                    "args": {"cover_id": "HZ-0002", "thresholds": {"water_high_mm": 2400}},
                }
                await platform.publish(f"{root}/cmd", json.dumps(request), qos=1)
                async with asyncio.timeout(5):
                    async for message in platform.messages:
                        assert isinstance(message.payload, bytes)
                        assert json.loads(message.payload)["ok"] is True
                        break
            answered = time.monotonic()
            await collector.wait_for(lambda: bool(collector.alarms()), 10)
            took = time.monotonic() - answered
        finally:
            await finish(sim, stop, task)
    (alarm,) = collector.alarms()
    assert (alarm["kind"], alarm["state"], alarm["cover"]["cover_id"]) == (
        "water_high",
        "raised",
        "HZ-0002",
    )
    assert took < 1.5, f"the alarm took {took:.2f} s"
    assert collector.errors == []


async def test_a_technicians_tail_sees_every_poll_of_a_quiet_sensor(
    tmp_path: Path, broker: Broker
) -> None:
    """While somebody tails, the bus keeps nothing back (each poll is a line for them);
    when the tail ends, it keeps the quiet repeats again."""
    from gateway.control import follow  # noqa: PLC0415

    sim, gateway, stop, task = await start_rig(tmp_path, broker, calm_level(), speed=1.0)
    try:
        await kept_at_the_bus(gateway, 4)
        polls: list[float] = []

        async def tail() -> None:
            request = {"cmd": "tail", "node": "rs485-0:1", "json": True}
            async for line in follow(gateway.config.control_path, request):
                if json.loads(line).get("what") == "modbus":
                    polls.append(time.monotonic())
                    if len(polls) >= 8:
                        return

        await asyncio.wait_for(tail(), 6)  # 8 polls at 0.25 s; kept back, one each 10 s
        await kept_at_the_bus(gateway, 4)
    finally:
        await finish(sim, stop, task)
    assert polls[-1] - polls[0] < 3.0
