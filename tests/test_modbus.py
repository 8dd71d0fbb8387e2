"""Device profiles, and a real pymodbus RTU client reading the simulated slaves over a pty."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusSerialClient
from pymodbus.exceptions import ModbusIOException

from firmware_sim.runner import ScenarioRunner
from firmware_sim.scenario import Scenario
from gateway.confcheck import Table
from gateway.config import SlaveConfig, SlaveRole
from gateway.drivers.modbus import SlaveError, _Slave, decoded
from gateway.errors import ConfigError, RegisterDecodeError
from gateway.protocol.modbus_profiles import (
    BUILTIN_PROFILES,
    QDY30A_LEVEL,
    WIT_INCLINOMETER,
    DataType,
    DeviceProfile,
    Order,
    ReadBlock,
    RegisterField,
    profile_from_config,
    registers_from_blocks,
)
from tests.harness import one_bus


def test_wit_signed_angles_and_temperature() -> None:
    regs = {0x3D: 0xFF00, 0x3E: 0x1000, 0x3F: 0x8000, 0x40: 0x0A28}
    values = WIT_INCLINOMETER.decode(regs)
    assert values["roll_deg"] == pytest.approx(-256 / 32768 * 180)  # 0xFF00 is -256
    assert values["pitch_deg"] == pytest.approx(22.5)
    assert values["yaw_deg"] == pytest.approx(-180.0)
    assert values["temperature_c"] == pytest.approx(26.0)


def test_wit_reads_in_one_request() -> None:
    assert WIT_INCLINOMETER.read_plan() == (ReadBlock(0x3D, 4),)


def test_qdy30a_decimal_places_register() -> None:
    assert QDY30A_LEVEL.read_plan() == (ReadBlock(0x03, 2),)
    assert QDY30A_LEVEL.decode({0x03: 2, 0x04: 153})["level"] == pytest.approx(1.53)
    assert QDY30A_LEVEL.decode({0x03: 0, 0x04: 0xFFFE})["level"] == pytest.approx(-2)


@pytest.mark.parametrize(
    ("dtype", "word", "byte", "value", "pack"),
    [
        (DataType.INT32, Order.BIG, Order.BIG, -123456, ">i"),
        (DataType.UINT32, Order.BIG, Order.BIG, 4000000000, ">I"),
        (DataType.FLOAT32, Order.BIG, Order.BIG, 12.5, ">f"),
        (DataType.FLOAT32, Order.LITTLE, Order.BIG, -0.75, ">f"),
        (DataType.INT32, Order.LITTLE, Order.LITTLE, 987654, ">i"),
    ],
)
def test_multi_register_types_and_orders(
    dtype: DataType, word: Order, byte: Order, value: float, pack: str
) -> None:
    data = struct.pack(pack, value)
    words = [int.from_bytes(data[i : i + 2], "big") for i in (0, 2)]
    if byte is Order.LITTLE:
        words = [((w & 0xFF) << 8) | (w >> 8) for w in words]
    if word is Order.LITTLE:
        words.reverse()
    field = RegisterField("v", 10, dtype, word_order=word, byte_order=byte)
    assert field.decode({10: words[0], 11: words[1]}) == pytest.approx(value)


@given(st.integers(-32768, 32767), st.floats(-100, 100), st.floats(-1000, 1000))
def test_scale_and_offset(raw: int, scale: float, offset: float) -> None:
    field = RegisterField("v", 0, DataType.INT16, scale=scale, offset=offset)
    assert field.decode({0: raw & 0xFFFF}) == pytest.approx(raw * scale + offset)


@given(
    st.integers(0, 0xFFFF),
    st.sampled_from([DataType.INT16, DataType.UINT16]),
    st.sampled_from(list(Order)),
    st.integers(0, 6),
    st.floats(-100, 100),
    st.floats(-1000, 1000),
)
def test_one_register_fields_decode_as_their_bytes_say(
    word: int, dtype: DataType, byte: Order, dp: int, scale: float, offset: float
) -> None:
    data = word.to_bytes(2, "big" if byte is Order.BIG else "little")
    raw = struct.unpack(">h" if dtype is DataType.INT16 else ">H", data)[0]
    field = RegisterField("v", 7, dtype, scale, offset, byte_order=byte, decimals_register=9)
    assert field.decode({7: word, 9: dp}) == raw * scale / 10.0**dp + offset


@given(st.dictionaries(st.integers(0, 0x50), st.integers(-(2**17), 2**17)))
def test_profiles_decode_or_raise_register_error(regs: dict[int, int]) -> None:
    for profile in BUILTIN_PROFILES.values():
        with contextlib.suppress(RegisterDecodeError):
            profile.decode(regs)


def test_short_reply_is_a_register_error() -> None:
    with pytest.raises(RegisterDecodeError):
        registers_from_blocks([ReadBlock(0, 3)], [[1, 2]])


def test_user_profile_from_config() -> None:
    table = Table(
        {
            "function": 4,
            "fields": [
                {"name": "flow", "address": 0x10, "type": "float32", "unit": "m3/h"},
                {"name": "temp", "address": 0x20, "scale": 0.1, "offset": -40, "unit": "degC"},
            ],
        },
        "profiles.flowmeter",
    )
    profile = profile_from_config("flowmeter", table)
    assert profile.function == 4
    assert profile.read_plan() == (ReadBlock(0x10, 2), ReadBlock(0x20, 1))
    regs = {0x10: 0x4148, 0x11: 0x0000, 0x20: 650}
    assert profile.decode(regs) == {"flow": 12.5, "temp": pytest.approx(25.0)}


@pytest.mark.parametrize(
    ("fields", "path", "why"),
    [
        ([{"name": "a", "address": 70000}], "profiles.p.fields[0].address", "must be 0"),
        ([{"name": "a", "address": 1, "type": "int8"}], "profiles.p.fields[0].type", "one of"),
        ([{"name": "a", "address": 1, "sclae": 2}], "profiles.p.fields[0].sclae", "unknown key"),
        ([], "profiles.p.fields", "at least one"),
    ],
)
def test_bad_user_profile_names_the_key(fields: list[object], path: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        profile_from_config("p", Table({"fields": fields}, "profiles.p"))
    assert info.value.path == path
    assert why in info.value.reason


async def _read(
    client: AsyncModbusSerialClient, profile: DeviceProfile, slave: int
) -> dict[str, float]:
    plan = profile.read_plan()
    replies = []
    for block in plan:
        reply = await client.read_holding_registers(
            block.address, count=block.count, device_id=slave
        )
        assert not reply.isError()
        replies.append(reply.registers)
    return profile.decode(registers_from_blocks(plan, replies))


async def test_pymodbus_client_reads_simulated_slaves_over_pty(
    make_scenario: Callable[..., Scenario],
) -> None:
    scenario = make_scenario(
        buses=one_bus(
            {
                "model": "wit_inclinometer",
                "address": 0x50,
                "roll_deg": -12.5,
                "pitch_deg": 3.25,
            },
            {"model": "qdy30a_level", "address": 1, "level": 1.234, "decimals": 3},
        ),
        timeline=[
            {"at_s": 0.5, "do": "set", "bus": "bus", "slave": 0x50, "roll_deg": -40.0},
            {"at_s": 0.5, "do": "silence", "bus": "bus", "slave": 1},
        ],
    )
    async with ScenarioRunner(scenario) as sim:
        client = AsyncModbusSerialClient(
            sim.endpoints().buses["bus"]["path"], baudrate=9600, timeout=0.5, retries=0
        )
        assert await client.connect()
        tilt = await _read(client, WIT_INCLINOMETER, 0x50)
        assert tilt["roll_deg"] == pytest.approx(-12.5, abs=0.01)
        assert tilt["pitch_deg"] == pytest.approx(3.25, abs=0.01)
        level = await _read(client, QDY30A_LEVEL, 1)
        assert level["level"] == pytest.approx(1.234)

        run = asyncio.create_task(sim.run())
        await asyncio.sleep(0.7)
        assert (await _read(client, WIT_INCLINOMETER, 0x50))["roll_deg"] == pytest.approx(
            -40, abs=0.01
        )
        with pytest.raises(ModbusIOException):
            await client.read_holding_registers(4, count=1, device_id=1)
        with pytest.raises(ModbusIOException):  # nobody at address 9
            await client.read_holding_registers(4, count=1, device_id=9)
        assert (await _read(client, WIT_INCLINOMETER, 0x50))["roll_deg"] == pytest.approx(
            -40, abs=0.01
        )
        run.cancel()
        client.close()


async def test_wire_bytes_match_the_spec_request(make_scenario: Callable[..., Scenario]) -> None:
    """`50 03 00 3D 00 03 99 86` from the spec, sent raw, gets a valid RTU reply."""
    import serial_asyncio_fast  # noqa: PLC0415

    scenario = make_scenario(
        buses=[
            {
                "name": "bus",
                "slaves": [{"model": "wit_inclinometer", "address": 0x50, "roll_deg": -1.40625}],
            }
        ]
    )
    async with ScenarioRunner(scenario) as sim:
        reader, writer = await serial_asyncio_fast.open_serial_connection(
            url=sim.endpoints().buses["bus"]["path"], baudrate=9600
        )
        writer.write(bytes.fromhex("50 03 00 3D 00 03 99 86"))
        reply = await asyncio.wait_for(reader.readexactly(11), 3)
        writer.close()
    assert reply[:3] == bytes.fromhex("50 03 06")
    assert reply[3:5] == bytes.fromhex("FF 00")  # roll -256 raw


@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF)), min_size=1, max_size=6))
def test_a_slave_decodes_repeated_registers_from_memory_as_afresh(
    polls: list[tuple[int, int]],
) -> None:
    slave = _Slave(SlaveConfig(1, QDY30A_LEVEL, SlaveRole.WATER_LEVEL))
    assert [b.count for b in QDY30A_LEVEL.read_plan()] == [2]
    for registers in polls + polls:  # each poll again: the second from memory
        replies = [registers]
        try:
            expected = decoded(QDY30A_LEVEL, replies)[1]
        except SlaveError:
            with pytest.raises(SlaveError):
                slave.decode(replies)
            continue
        got = slave.decode(replies)
        assert got == expected
        got.clear()  # each reading's values are its own
        assert slave.decode(list(replies)) == expected
