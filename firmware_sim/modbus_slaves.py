"""RS-485 slaves as real Modbus RTU servers (pymodbus 3.16 SimDevice/SimData).

Each slave keeps its readings in engineering units; the ``action`` callback
writes them into the register image on every request, encoded exactly as the
part's register map says (shared/spec/rs485-sensors.md). A slave can be told
to go silent (unpowered, wrong address); its reply is then never sent.

The bus is silent where nobody is, as a real RS-485 bus is: pymodbus's
SimDevice server answers an unknown id through device 0 (and without one, with
exception 4), so device 0 here is a catch-all spanning every register whose
action raises ``NoSuchIdException``, and the server ignores missing devices.
A scan therefore finds exactly the slaves that are present and speaking.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from dataclasses import dataclass, field
from typing import Protocol

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusSerialServer
from pymodbus.simulator import DataType, SimData, SimDevice

from firmware_sim.ptys import NullModem

log = logging.getLogger(__name__)

WIT_DEFAULT_ADDRESS = 0x50
QDY30A_DEFAULT_ADDRESS = 0x01


def _int16(value: float) -> int:
    """Signed value to a register (two's complement, clamped)."""
    raw = max(-32768, min(32767, round(value)))
    return raw & 0xFFFF


class SimSlave(Protocol):
    address: int
    silent: bool

    def register_span(self) -> tuple[int, int]: ...
    def fill(self, start: int, registers: list[int]) -> None: ...


def _jitter(rng: random.Random, noise: float) -> float:
    """Measurement noise: a reading whose last digits move from one read to the next."""
    return rng.uniform(-noise, noise) if noise else 0.0


@dataclass
class WitInclinometer:
    """WT901C-485 class: angles at 0x3D.., temperature at 0x40."""

    address: int = WIT_DEFAULT_ADDRESS
    roll_deg: float = 0.0
    pitch_deg: float = 0.0
    yaw_deg: float = 0.0
    temperature_c: float = 15.0
    accel_g: tuple[float, float, float] = (0.0, 0.0, 1.0)
    silent: bool = False
    noise: float = 0.0  # each read adds up to ± this to roll and pitch, as a real sensor's
    _rng: random.Random = field(
        default_factory=lambda: random.Random(WIT_DEFAULT_ADDRESS), repr=False, compare=False
    )

    def register_span(self) -> tuple[int, int]:
        return 0x00, 0x70

    def fill(self, start: int, registers: list[int]) -> None:
        values = {
            0x34: _int16(self.accel_g[0] / 16 * 32768),
            0x35: _int16(self.accel_g[1] / 16 * 32768),
            0x36: _int16(self.accel_g[2] / 16 * 32768),
            0x3D: _int16((self.roll_deg + _jitter(self._rng, self.noise)) / 180 * 32768),
            0x3E: _int16((self.pitch_deg + _jitter(self._rng, self.noise)) / 180 * 32768),
            0x3F: _int16(self.yaw_deg / 180 * 32768),
            0x40: _int16(self.temperature_c * 100),
            0x1A: self.address,
        }
        for address, raw in values.items():
            registers[address - start] = raw

    @property
    def tilt_deg(self) -> float:
        return math.hypot(self.roll_deg, self.pitch_deg)


@dataclass
class Qdy30aLevel:
    """QDY30A class submersible level transmitter: value at 0x04, dp at 0x03."""

    address: int = QDY30A_DEFAULT_ADDRESS
    level: float = 0.0  # in the device's unit (metres by default)
    decimals: int = 3
    unit_code: int = 1
    silent: bool = False
    noise: float = 0.0  # each read adds up to ± this to the level (its unit)
    _rng: random.Random = field(
        default_factory=lambda: random.Random(QDY30A_DEFAULT_ADDRESS), repr=False, compare=False
    )

    def register_span(self) -> tuple[int, int]:
        return 0x00, 0x10

    def fill(self, start: int, registers: list[int]) -> None:
        values = {
            0x00: self.address,
            0x01: 3,  # 9600
            0x02: self.unit_code,
            0x03: self.decimals,
            0x04: _int16((self.level + _jitter(self._rng, self.noise)) * 10**self.decimals),
        }
        for address, raw in values.items():
            registers[address - start] = raw


async def _absent(  # noqa: PLR0917 - pymodbus fixes this signature
    function_code: int,
    start_address: int,
    address: int,
    count: int,
    current_registers: list[int],
    set_values: list[int] | list[bool] | None,
) -> ExcCodes | None:
    raise NoSuchIdException(f"nobody at this address (function {function_code})")


def _catch_all() -> SimDevice:
    """Device 0, which pymodbus asks for every id nobody owns: silent for every register.

    It spans the whole register space so the action, not an address check
    (exception 2), decides; the action says "no such id", which the server,
    told to ignore missing devices, answers with silence.
    """
    return SimDevice(
        id=0,
        simdata=[SimData(0, count=65536, values=0, datatype=DataType.REGISTERS)],
        action=_absent,
    )


@dataclass
class SimBus:
    """An RS-485 bus: several slaves behind one pymodbus RTU server on a null-modem.

    ``path`` is the end the gateway (or a technician's tool) opens.
    """

    name: str
    slaves: list[SimSlave] = field(default_factory=list)
    baudrate: int = 9600
    _cable: NullModem | None = None
    _server: ModbusSerialServer | None = None

    @property
    def path(self) -> str:
        if self._cable is None:
            raise RuntimeError("bus not started")
        return self._cable.b.path

    def slave(self, address: int) -> SimSlave:
        for s in self.slaves:
            if s.address == address:
                return s
        raise KeyError(f"bus {self.name} has no slave {address}")

    def _device(self, slave: SimSlave) -> SimDevice:
        first, count = slave.register_span()

        async def action(  # noqa: PLR0917 - pymodbus fixes this signature
            function_code: int,
            start_address: int,
            address: int,
            count: int,
            current_registers: list[int],
            set_values: list[int] | list[bool] | None,
        ) -> ExcCodes | None:
            if slave.silent:
                raise NoSuchIdException(f"slave {slave.address} is silent")
            slave.fill(start_address, current_registers)
            return None

        return SimDevice(
            id=slave.address,
            simdata=[SimData(first, count=count, values=0, datatype=DataType.REGISTERS)],
            action=action,
        )

    async def start(self) -> None:
        self._cable = NullModem()
        await self._cable.__aenter__()
        self._server = ModbusSerialServer(
            [_catch_all(), *(self._device(s) for s in self.slaves)],
            framer=FramerType.RTU,
            port=self._cable.a.path,
            baudrate=self.baudrate,
            ignore_missing_devices=True,
        )
        await self._server.serve_forever(background=True)
        log.info("bus %s: slaves %s on %s", self.name, [s.address for s in self.slaves], self.path)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None
        if self._cable is not None:
            await self._cable.__aexit__(None, None, None)
            self._cable = None
        await asyncio.sleep(0)
