"""The RTU master: its frames (property tests), and transactions over real ptys.

The slaves are the simulator's pymodbus RTU server, or the test itself
playing a misbehaving slave on the master end of a pty.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import (
    ReadHoldingRegistersResponse,
    ReadInputRegistersResponse,
)

from firmware_sim.ptys import PtyPort
from firmware_sim.runner import ScenarioRunner
from firmware_sim.scenario import Scenario
from gateway.config import parse_config
from gateway.drivers import rtu
from gateway.drivers.modbus import ModbusBus, probe, read_profile
from gateway.drivers.rtu import ModbusLinkError, NoReplyError, RtuMaster
from gateway.errors import CrcError, ProtocolError
from gateway.events import Input, SlaveRead
from gateway.protocol.modbus_profiles import QDY30A_LEVEL, WIT_INCLINOMETER
from gateway.protocol.modbus_rtu import (
    RegisterReply,
    parse_reply,
    read_request,
    reply_length,
)
from tests.harness import one_bus

registers = st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=125)
SLAVE = FramerRTU(DecodePDU(is_server=True))  # pymodbus's framer as a slave uses it
RESPONSES: dict[int, type[ModbusPDU]] = {
    3: ReadHoldingRegistersResponse,
    4: ReadInputRegistersResponse,
}


def with_crc(body: bytes) -> bytes:
    """Any bytes, framed: pymodbus's CRC, as sent (its value read big-endian)."""
    return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")


def crc_ok(frame: bytes | bytearray) -> bool:
    return FramerRTU.check_CRC(bytes(frame[:-2]), int.from_bytes(frame[-2:], "big"))


def slave_reply(dev: int, function: int, values: list[int]) -> bytes:
    return SLAVE.buildFrame(RESPONSES[function](registers=values, dev_id=dev))


def test_request_matches_the_spec_example() -> None:
    assert read_request(0x50, 3, 0x3D, 3) == bytes.fromhex("50 03 00 3D 00 03 99 86")


def test_bad_crc_names_the_crc_register_values() -> None:
    frame = bytearray(slave_reply(0x50, 3, [7]))
    sent = int.from_bytes(frame[-2:], "little")  # CRC-16/MODBUS goes low byte first
    frame[-2] ^= 0x01
    with pytest.raises(CrcError) as caught:
        parse_reply(frame, 3)
    assert (caught.value.received, caught.value.computed) == (sent ^ 0x01, sent)


@given(
    st.integers(1, 247),
    st.sampled_from([3, 4]),
    st.integers(0, 0xFF00),
    st.integers(1, 125),
)
def test_requests_carry_their_fields(dev: int, function: int, address: int, count: int) -> None:
    frame = read_request(dev, function, address, count)
    assert len(frame) == 8
    assert crc_ok(frame)
    assert (frame[0], frame[1]) == (dev, function)
    assert int.from_bytes(frame[2:4], "big") == address
    assert int.from_bytes(frame[4:6], "big") == count


@given(st.integers(0, 247), st.sampled_from([3, 4]), registers)
def test_register_replies_round_trip(dev: int, function: int, values: list[int]) -> None:
    frame = slave_reply(dev, function, values)
    assert frame[:3] == bytes((dev, function, 2 * len(values)))
    assert reply_length(frame[:2]) is None
    assert reply_length(frame[:3]) == len(frame)
    assert parse_reply(frame, function) == RegisterReply(dev, function, tuple(values))


@given(st.integers(0, 247), st.sampled_from([3, 4]), st.integers(0, 255))
def test_exception_replies_round_trip(dev: int, function: int, code: int) -> None:
    frame = SLAVE.buildFrame(ExceptionResponse(function, code, device_id=dev))
    assert frame[:3] == bytes((dev, function | 0x80, code))
    assert reply_length(frame[:2]) == 5
    reply = parse_reply(frame, function)
    assert reply.is_error
    assert reply.exception_code == code


@given(st.binary(max_size=8))
def test_reply_length_of_any_bytes_is_a_length_or_none(raw: bytes) -> None:
    length = reply_length(raw)
    assert length is None or 5 <= length <= 5 + 255


def pymodbus_length(raw: bytes) -> int | None:
    """What pymodbus itself says, asked afresh (``reply_length`` remembers its answers)."""
    if len(raw) < 2 or not (raw[1] & 0x80 or raw[1] in (3, 4)):
        return None
    pdu_class = DecodePDU(is_server=False).lookupPduClass(raw[:3])
    return None if pdu_class is None else pdu_class.calculateRtuFrameSize(raw[:3]) or None


@given(st.binary(max_size=8))
def test_reply_length_remembered_is_what_pymodbus_says(raw: bytes) -> None:
    first = reply_length(raw)
    assert first == reply_length(raw) == pymodbus_length(raw)  # the second from memory


@pytest.mark.parametrize("function", [0, 1, 6, 24, 43, 0x63, 0x7F])
def test_reply_length_of_unasked_functions_is_unknown(function: int) -> None:
    for size in range(2, 8):  # 24 and 43 made pymodbus index past a short buffer
        assert reply_length(bytes((1, function)) + bytes(size - 2)) is None


@given(st.integers(0, 247), st.sampled_from([3, 4]), registers, st.data())
def test_a_flipped_bit_is_never_a_reply(
    dev: int, function: int, values: list[int], data: st.DataObject
) -> None:
    frame = bytearray(slave_reply(dev, function, values))
    bit = data.draw(st.integers(0, 8 * len(frame) - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ProtocolError):
        parse_reply(frame, function)  # CRC-16 catches every single-bit error


@given(st.binary(max_size=300), st.sampled_from([3, 4]))
def test_any_bytes_parse_or_raise_a_protocol_error(raw: bytes, function: int) -> None:
    try:
        reply = parse_reply(raw, function)
    except ProtocolError:
        return
    assert crc_ok(raw)
    assert reply.function == function


def test_bad_crc_is_named() -> None:
    frame = bytearray(with_crc(bytes((1, 3, 2, 0, 7))))
    frame[-1] ^= 0xFF
    with pytest.raises(CrcError):
        parse_reply(frame, 3)


@pytest.mark.parametrize(
    ("dev", "function", "address", "count"),
    [(248, 3, 0, 1), (1, 6, 0, 1), (1, 3, 0, 0), (1, 3, 0, 126), (1, 3, 0xFFFF, 2)],
)
def test_impossible_requests_are_refused(dev: int, function: int, address: int, count: int) -> None:
    with pytest.raises(ValueError, match=r"\d"):
        read_request(dev, function, address, count)


async def test_noisy_simulated_slaves_read_differently_each_time(
    make_scenario: Callable[..., Scenario],
) -> None:
    """``noise`` moves a slave's last digits from one read to the next, within ± noise."""
    scenario = make_scenario(
        buses=one_bus(
            {"model": "wit_inclinometer", "address": 0x50, "roll_deg": 3.0, "noise": 0.2},
            {"model": "qdy30a_level", "address": 1, "level": 1.0, "noise": 0.01},
        ),
    )
    async with ScenarioRunner(scenario) as sim:
        master = RtuMaster(sim.endpoints().buses["bus"]["path"], timeout_s=0.3, retries=1)
        assert await master.connect()
        try:
            tilts = [(await read_profile(master, 0x50, WIT_INCLINOMETER))[1] for _ in range(4)]
            levels = [(await read_profile(master, 1, QDY30A_LEVEL))[1] for _ in range(4)]
        finally:
            master.close()
    rolls = [t["roll_deg"] for t in tilts]
    assert len(set(rolls)) > 1
    assert all(abs(r - 3.0) <= 0.21 for r in rolls)
    assert len({lv["level"] for lv in levels}) > 1
    assert all(abs(lv["level"] - 1.0) <= 0.0101 for lv in levels)


async def test_master_reads_simulated_slaves_and_hears_silence(
    make_scenario: Callable[..., Scenario],
) -> None:
    scenario = make_scenario(
        buses=one_bus(
            {"model": "wit_inclinometer", "address": 0x50, "roll_deg": -12.5},
            {"model": "qdy30a_level", "address": 1, "level": 1.234, "decimals": 3},
        ),
    )
    async with ScenarioRunner(scenario) as sim:
        master = RtuMaster(sim.endpoints().buses["bus"]["path"], timeout_s=0.3, retries=1)
        assert await master.connect()
        try:
            _, tilt = await read_profile(master, 0x50, WIT_INCLINOMETER)
            assert tilt["roll_deg"] == pytest.approx(-12.5, abs=0.01)
            _, level = await read_profile(master, 1, QDY30A_LEVEL)
            assert level["level"] == pytest.approx(1.234)
            with pytest.raises(NoReplyError):  # nobody at address 9
                await master.read_holding_registers(0, count=1, device_id=9)
            assert (await probe(master, 9, timeout_s=0.3)).answered is False
            assert (await probe(master, 1, timeout_s=0.3)).answered is True
            # A cancelled transaction leaves the link ready for the next one.
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(master.read_holding_registers(0, device_id=9), 0.01)
            _, again = await read_profile(master, 1, QDY30A_LEVEL)
            assert again == level
        finally:
            master.close()
        assert not master.connected


def _sevens() -> tuple[bytes, bytes, bytes]:
    """Slave 1's replies to one register read: 7, 8, and 7 with one bit flipped."""
    seven, eight = slave_reply(1, 3, [7]), slave_reply(1, 3, [8])
    garbled = bytearray(seven)
    garbled[4] ^= 0x01
    return seven, eight, bytes(garbled)


async def _answer(port: PtyPort, reply: bytes, *, pieces: int = 1) -> bytes:
    """Play a slave: wait for a request on the pty, answer ``reply`` (in ``pieces`` writes
    10 ms apart, as a slow UART delivers it); the request."""
    request = await asyncio.wait_for(port_read(port), 5)
    step = -(-len(reply) // pieces)
    for i in range(0, len(reply), step):
        if i:
            await asyncio.sleep(0.01)
        port.write(reply[i : i + step])
    return request


async def test_garbled_wrong_slave_and_exception_replies() -> None:
    port = PtyPort()
    master = RtuMaster(port.path, timeout_s=0.3, retries=0)
    assert await master.connect()
    try:
        bad = bytearray(with_crc(bytes((1, 3, 2, 0, 7))))
        bad[3] ^= 0x10
        peer = asyncio.create_task(_answer(port, bytes(bad)))
        with pytest.raises(ModbusLinkError, match="garbled") as caught:
            await master.read_holding_registers(4, count=1, device_id=1)
        assert not isinstance(caught.value, NoReplyError)
        assert await peer == read_request(1, 3, 4, 1)

        peer = asyncio.create_task(_answer(port, with_crc(bytes((1, 0x83, 2)))))
        reply = await master.read_holding_registers(4, count=1, device_id=1)
        assert reply.exception_code == 2
        await peer

        peer = asyncio.create_task(_answer(port, b"\x01\x2b\x00"))  # never frames
        with pytest.raises(ModbusLinkError, match="garbled"):
            await master.read_input_registers(4, count=1, device_id=1)
        await peer

        other = with_crc(bytes((7, 3, 2, 0, 9)))  # someone else answers
        peer = asyncio.create_task(_answer(port, other))
        assert (await master.read_holding_registers(4, device_id=1)).dev_id == 7
        await peer
    finally:
        master.close()
        port.close()


async def test_a_repeated_reply_is_taken_from_memory_and_a_changed_one_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    parsed: list[bytes] = []

    def counting(frame: bytes | bytearray, function: int) -> RegisterReply:
        parsed.append(bytes(frame))
        return parse_reply(frame, function)

    monkeypatch.setattr(rtu, "parse_reply", counting)
    port = PtyPort()
    master = RtuMaster(port.path, timeout_s=0.3, retries=0)
    assert await master.connect()
    seven, eight, garbled = _sevens()
    try:
        for answer, expected in [(seven, 7), (seven, 7), (eight, 8), (seven, 7), (seven, 7)]:
            peer = asyncio.create_task(_answer(port, answer))
            assert (await master.read_holding_registers(4, device_id=1)).registers == (expected,)
            await peer
        assert parsed == [seven, eight, seven]  # each change parsed, each repeat remembered
        # A repeat in pieces is gathered and measured first, and still remembered.
        peer = asyncio.create_task(_answer(port, seven, pieces=3))
        assert (await master.read_holding_registers(4, device_id=1)).registers == (7,)
        await peer
        # The last reply and more: the reply is what its length says, the rest dropped.
        peer = asyncio.create_task(_answer(port, seven + b"\x00"))
        assert (await master.read_holding_registers(4, device_id=1)).registers == (7,)
        await peer
        assert parsed == [seven, eight, seven]
        peer = asyncio.create_task(_answer(port, garbled))  # one bit off the last good
        with pytest.raises(ModbusLinkError, match="garbled"):
            await master.read_holding_registers(4, device_id=1)
        await peer
        # Remembered per request: the same bytes answering another request are parsed,
        # and found to be the wrong function.
        peer = asyncio.create_task(_answer(port, seven))
        with pytest.raises(ModbusLinkError, match="answered with 3"):
            await master.read_input_registers(4, device_id=1)
        await peer
        assert parsed[-1] == seven
    finally:
        master.close()
        port.close()


async def test_a_chained_transaction_times_out_on_its_own_deadline() -> None:
    """A transaction started from the one before keeps that one's timer; the timer
    moves on to the new deadline, so silence still costs the new one its full timeout."""
    port = PtyPort()
    master = RtuMaster(port.path, timeout_s=0.3, retries=0)
    assert await master.connect()
    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[tuple[float, RegisterReply | ModbusLinkError]] = loop.create_future()
    second_sent = 0.0

    def second(result: RegisterReply | ModbusLinkError) -> None:
        outcome.set_result((loop.time() - second_sent, result))

    def first(result: RegisterReply | ModbusLinkError) -> None:
        nonlocal second_sent
        assert isinstance(result, RegisterReply)
        second_sent = loop.time()
        master.start(read_request(2, 3, 0, 1), second)  # slave 2 stays silent

    try:
        reply = slave_reply(1, 3, [5])
        master.start(read_request(1, 3, 0, 1), first)
        request = await asyncio.wait_for(port_read(port), 5)
        await asyncio.sleep(0.2)  # two thirds of the first transaction's timeout
        port.write(reply)
        took, result = await asyncio.wait_for(outcome, 5)
        assert request == read_request(1, 3, 0, 1)
        assert isinstance(result, NoReplyError)
        assert took >= 0.3 - 0.01  # not the first transaction's deadline (0.1 s after the send)
    finally:
        master.close()
        port.close()


async def port_read(port: PtyPort) -> bytes:
    """The next bytes the master writes, as the slave's end of the pty sees them."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        data = port.read_nowait()
        if data and not got.done():
            got.set_result(data)

    loop.add_reader(port.master, readable)
    try:
        return await got
    finally:
        loop.remove_reader(port.master)


async def test_a_closed_adapter_fails_the_transaction_and_the_link() -> None:
    port = PtyPort()
    master = RtuMaster(port.path, timeout_s=2.0, retries=3)
    assert await master.connect()
    try:
        reading = asyncio.create_task(master.read_holding_registers(0, device_id=1))
        await asyncio.sleep(0)  # the request is on the wire
        port.close()  # the adapter is pulled
        with pytest.raises(ModbusLinkError) as caught:
            await reading
        assert not isinstance(caught.value, NoReplyError)
        assert not master.connected
    finally:
        master.close()


async def test_a_missing_port_does_not_open() -> None:
    master = RtuMaster("/dev/covergw-no-such-port", timeout_s=0.1)
    assert not await master.connect()
    assert master.last_error


async def test_bus_hands_a_cycles_readings_on_together_and_lends_between_cycles(
    make_scenario: Callable[..., Scenario], tmp_path: Path
) -> None:
    scenario = make_scenario(
        buses=one_bus(
            {"model": "wit_inclinometer", "address": 0x50, "roll_deg": 4.0},
            {"model": "qdy30a_level", "address": 1, "level": 0.75, "decimals": 2},
        ),
    )
    async with ScenarioRunner(scenario) as sim:
        config = parse_config(
            {
                "gateway": {"id": "g", "state_dir": str(tmp_path)},
                "modbus": [
                    {
                        "name": "rs485",
                        "port": sim.endpoints().buses["bus"]["path"],
                        "timeout_s": 0.3,
                        "slaves": [
                            {
                                "address": 0x50,
                                "profile": "wit_inclinometer",
                                "poll_interval_s": 0.2,
                            },
                            {"address": 1, "profile": "qdy30a_level", "poll_interval_s": 0.2},
                        ],
                    }
                ],
            },
            base_dir=tmp_path,
        )
        loop = asyncio.get_running_loop()
        heard: list[Input] = []
        seen_together: list[int] = []  # readings already handed on when the first one's turn ends
        enough = asyncio.Event()

        def sink(event: Input, critical: bool) -> None:
            heard.append(event)
            if len(heard) % 2 == 1:
                loop.call_soon(lambda: seen_together.append(len(heard)))
            if len(heard) >= 6:
                enough.set()

        bus = ModbusBus(config.modbus[0], sink)
        stop = asyncio.Event()
        running = asyncio.create_task(bus.run(stop))
        try:
            await asyncio.wait_for(enough.wait(), 10)
            assert await bus.read_now(1) == {"level": pytest.approx(0.75)}  # between cycles
        finally:
            stop.set()
            await asyncio.wait_for(running, 5)
    assert all(isinstance(e, SlaveRead) for e in heard)
    assert [e.address for e in heard[:6]] == [0x50, 1] * 3
    assert all(n % 2 == 0 for n in seen_together)  # each cycle's two readings came at once
    assert bus.slaves[1].failures == 0
    assert bus.status()["state"] == "closed"


async def test_bus_reads_a_profile_in_several_requests(
    make_scenario: Callable[..., Scenario], tmp_path: Path
) -> None:
    """A user profile whose fields lie far apart: one request per block, one reading."""
    scenario = make_scenario(
        buses=[
            {"name": "bus", "slaves": [{"model": "wit_inclinometer", "address": 0x50}]},
        ],
    )
    async with ScenarioRunner(scenario) as sim:
        config = parse_config(
            {
                "gateway": {"id": "g", "state_dir": str(tmp_path)},
                "profiles": {
                    "wit_split": {
                        "fields": [
                            {"name": "own_address", "address": 0x1A, "type": "uint16"},
                            {"name": "temperature_c", "address": 0x40, "scale": 0.01},
                        ]
                    }
                },
                "modbus": [
                    {
                        "name": "rs485",
                        "port": sim.endpoints().buses["bus"]["path"],
                        "timeout_s": 0.3,
                        "slaves": [{"address": 0x50, "profile": "wit_split"}],
                    }
                ],
            },
            base_dir=tmp_path,
        )
        assert len(config.modbus[0].slaves[0].profile.read_plan()) == 2
        heard: list[Input] = []
        got = asyncio.Event()

        def sink(event: Input, critical: bool) -> None:
            heard.append(event)
            got.set()

        bus = ModbusBus(config.modbus[0], sink)
        stop = asyncio.Event()
        running = asyncio.create_task(bus.run(stop))
        try:
            await asyncio.wait_for(got.wait(), 10)
        finally:
            stop.set()
            await asyncio.wait_for(running, 5)
    first = heard[0]
    assert isinstance(first, SlaveRead)
    assert first.values == {"own_address": 0x50, "temperature_c": pytest.approx(15.0)}


async def test_a_parked_port_transacts_blocking_as_the_loop_does() -> None:
    """The poll thread's ``transact``: a reply (whole or in pieces), a repeat from memory,
    a garbled attempt retried, silence, and the adapter pulled (``OSError``: the bus
    reopens the port)."""
    port = PtyPort()
    master = RtuMaster(port.path, timeout_s=0.3, retries=1)
    assert await master.connect()
    seven, eight, garbled = _sevens()
    request = read_request(1, 3, 4, 1)
    master.park()
    try:
        for answer, pieces in [(seven, 1), (seven, 1), (eight, 3)]:
            peer = asyncio.create_task(_answer(port, answer, pieces=pieces))
            reply = await asyncio.to_thread(master.transact, request)
            assert isinstance(reply, RegisterReply)
            assert reply.registers == ((8,) if answer == eight else (7,))
            assert await peer == request
        # A garbled first attempt: the retry is answered.
        peers = asyncio.create_task(_garbled_then(port, garbled, seven))
        reply = await asyncio.to_thread(master.transact, request)
        assert isinstance(reply, RegisterReply)
        assert reply.registers == (7,)
        assert await peers == 2
        silent = await asyncio.to_thread(master.transact, read_request(2, 3, 0, 1))
        assert isinstance(silent, NoReplyError)
        assert "slave 2" in str(silent)
        port.close()  # the adapter is pulled
        with pytest.raises(OSError):
            await asyncio.to_thread(master.transact, request)
    finally:
        master.unpark()
        master.close()
    assert not master.connected


async def _garbled_then(port: PtyPort, garbled: bytes, good: bytes) -> int:
    """Answer the first request with GARBLED, the retry with GOOD; how many requests came."""
    first = await _answer(port, garbled)
    second = await _answer(port, good)
    return 2 if first == second else 0
