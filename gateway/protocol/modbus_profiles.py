"""Device profiles: how a Modbus sensor's registers become named readings.

The gateway never hard-codes a part. A ``DeviceProfile`` lists fields
(register, data type, word and byte order, scale, offset, decimal-places
register, unit); the two reference parts of shared/spec/rs485-sensors.md ship
as ``BUILTIN_PROFILES`` and users write more in configuration.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from gateway.confcheck import Table
from gateway.errors import ConfigError, RegisterDecodeError


class DataType(StrEnum):
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT32 = "float32"

    @property
    def registers(self) -> int:
        return 1 if self in (DataType.INT16, DataType.UINT16) else 2


class Order(StrEnum):
    BIG = "big"
    LITTLE = "little"


_STRUCT = {
    DataType.INT16: ">h",
    DataType.UINT16: ">H",
    DataType.INT32: ">i",
    DataType.UINT32: ">I",
    DataType.FLOAT32: ">f",
}


@dataclass(frozen=True, slots=True)
class RegisterField:
    """One named value: ``value = raw * scale / 10**dp + offset``.

    ``dp`` is read from ``decimals_register`` when the part keeps its number
    of decimal places in a register (QDY30A style), else it is 0.
    """

    name: str
    address: int
    dtype: DataType = DataType.INT16
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""
    word_order: Order = Order.BIG
    byte_order: Order = Order.BIG
    decimals_register: int | None = None

    def addresses(self) -> range:
        return range(self.address, self.address + self.dtype.registers)

    def decode(self, registers: Mapping[int, int]) -> float:
        if self.dtype is DataType.INT16 or self.dtype is DataType.UINT16:
            return self._decode_one(registers)
        try:
            words = [registers[a] for a in self.addresses()]
            dp = registers[self.decimals_register] if self.decimals_register is not None else 0
        except KeyError as err:
            raise RegisterDecodeError(f"{self.name}: register {err} was not read") from err
        if any(not 0 <= w <= 0xFFFF for w in words):
            raise RegisterDecodeError(f"{self.name}: register value outside 0..65535: {words}")
        if not 0 <= dp <= 6:
            raise RegisterDecodeError(f"{self.name}: decimal places register holds {dp}")
        if self.word_order is Order.LITTLE:
            words.reverse()
        data = b"".join(w.to_bytes(2, "big") for w in words)
        if self.byte_order is Order.LITTLE:
            data = b"".join(data[i : i + 2][::-1] for i in range(0, len(data), 2))
        raw = float(struct.unpack(_STRUCT[self.dtype], data)[0])
        return raw * self.scale / 10.0**dp + self.offset

    def _decode_one(self, registers: Mapping[int, int]) -> float:
        """A one-register field, as ``decode`` does it, without the bytes in between."""
        try:
            word = registers[self.address]
            dp = registers[self.decimals_register] if self.decimals_register is not None else 0
        except KeyError as err:
            raise RegisterDecodeError(f"{self.name}: register {err} was not read") from err
        if not 0 <= word <= 0xFFFF:
            raise RegisterDecodeError(f"{self.name}: register value outside 0..65535: {[word]}")
        if not 0 <= dp <= 6:
            raise RegisterDecodeError(f"{self.name}: decimal places register holds {dp}")
        if self.byte_order is Order.LITTLE:
            word = ((word & 0xFF) << 8) | (word >> 8)
        if self.dtype is DataType.INT16 and word & 0x8000:
            word -= 0x10000
        return float(word) * self.scale / 10.0**dp + self.offset


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One Modbus read request: ``count`` registers from ``address``."""

    address: int
    count: int

    def addresses(self) -> range:
        return range(self.address, self.address + self.count)


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    name: str
    fields: tuple[RegisterField, ...]
    function: int = 3  # 3 holding registers, 4 input registers
    max_gap: int = 4  # registers between fields still read in one request
    _plan: tuple[ReadBlock, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_plan", self._make_plan())  # polled every second: once

    def read_plan(self) -> tuple[ReadBlock, ...]:
        """The fewest requests that read every register the fields need."""
        return self._plan

    def _make_plan(self) -> tuple[ReadBlock, ...]:
        needed = sorted(
            {a for f in self.fields for a in f.addresses()}
            | {f.decimals_register for f in self.fields if f.decimals_register is not None}
        )
        blocks: list[ReadBlock] = []
        for address in needed:
            if blocks and address - (blocks[-1].address + blocks[-1].count) <= self.max_gap:
                last = blocks[-1]
                blocks[-1] = ReadBlock(last.address, address - last.address + 1)
            else:
                blocks.append(ReadBlock(address, 1))
        return tuple(blocks)

    def decode(self, registers: Mapping[int, int]) -> dict[str, float]:
        return {f.name: f.decode(registers) for f in self.fields}


def registers_from_blocks(
    blocks: Sequence[ReadBlock], values: Sequence[Sequence[int]]
) -> dict[int, int]:
    """Join each block's reply into one address → value map."""
    out: dict[int, int] = {}
    for block, regs in zip(blocks, values, strict=True):
        if len(regs) < block.count:
            raise RegisterDecodeError(
                f"asked for {block.count} registers at 0x{block.address:04X}, got {len(regs)}"
            )
        out.update(zip(block.addresses(), regs, strict=False))
    return out


def _wit_angle(name: str, address: int) -> RegisterField:
    return RegisterField(name, address, DataType.INT16, scale=180 / 32768, unit="deg")


WIT_INCLINOMETER = DeviceProfile(
    name="wit_inclinometer",
    fields=(
        _wit_angle("roll_deg", 0x3D),
        _wit_angle("pitch_deg", 0x3E),
        _wit_angle("yaw_deg", 0x3F),
        RegisterField("temperature_c", 0x40, DataType.INT16, scale=0.01, unit="degC"),
    ),
)

QDY30A_LEVEL = DeviceProfile(
    name="qdy30a_level",
    fields=(RegisterField("level", 0x04, DataType.INT16, decimals_register=0x03, unit="m"),),
)

BUILTIN_PROFILES: dict[str, DeviceProfile] = {p.name: p for p in (WIT_INCLINOMETER, QDY30A_LEVEL)}


def profile_from_config(name: str, table: Table) -> DeviceProfile:
    """A user's profile from a ``[profiles.NAME]`` table.

    ``[[profiles.NAME.fields]]`` entries take ``name``, ``address``, ``type``,
    ``scale``, ``offset``, ``unit``, ``word_order``, ``byte_order``,
    ``decimals_register``.
    """
    fields = []
    for ft in table.tables("fields"):
        dtype = ft.choice("type", DataType, DataType.INT16)
        field = RegisterField(
            name=ft.text("name"),
            address=ft.integer("address", lo=0, hi=0xFFFF - (dtype.registers - 1)),
            dtype=dtype,
            scale=ft.number("scale", 1.0),
            offset=ft.number("offset", 0.0),
            unit=ft.text("unit", ""),
            word_order=ft.choice("word_order", Order, Order.BIG),
            byte_order=ft.choice("byte_order", Order, Order.BIG),
            decimals_register=ft.integer("decimals_register", None, lo=0, hi=0xFFFF),
        )
        ft.done()
        fields.append(field)
    if not fields:
        raise ConfigError(table.key("fields"), "a profile needs at least one field")
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise ConfigError(table.key("fields"), f"field names repeat: {names}")
    profile = DeviceProfile(
        name=name,
        fields=tuple(fields),
        function=table.integer("function", 3, lo=3, hi=4),
        max_gap=table.integer("max_gap", 4, lo=0, hi=32),
    )
    table.done()
    if any(b.count > 125 for b in profile.read_plan()):
        raise ConfigError(table.path, "a read block exceeds 125 registers; lower max_gap")
    return profile
