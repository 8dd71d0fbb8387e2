"""Modbus RTU frames as the master sees them: read requests out, register replies in.

Only what the gateway asks of a slave: read holding (3) or input (4)
registers. A request is ``address, function, start (2), count (2), CRC``; a
reply is ``address, function, byte count, registers (2 each), CRC`` or, for an
exception, ``address, function | 0x80, code, CRC``. CRC-16/MODBUS, low byte
first. The wire is never trusted: a reply is checked for its CRC, its length
and its function before a register is read from it.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.errors import CrcError, LengthError, ProtocolError, TruncatedError

READ_HOLDING = 3
READ_INPUT = 4
READ_FUNCTIONS = (READ_HOLDING, READ_INPUT)
MAX_READ_COUNT = 125  # registers in one read (the spec's limit: 250 data bytes)
EXCEPTION_BIT = 0x80
EXCEPTION_LENGTH = 5  # address, function | 0x80, code, CRC


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray | memoryview) -> int:
    """CRC-16/MODBUS (poly 0xA001 reflected, init 0xFFFF); sent low byte first."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def with_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "little")


class UnexpectedFunctionError(ProtocolError):
    """A reply for a function the master did not ask for."""


@dataclass(frozen=True, slots=True)
class RegisterReply:
    """One slave's answer to a read: its registers, or the exception code it sent."""

    dev_id: int
    function: int
    registers: tuple[int, ...] = ()
    exception_code: int | None = None

    @property
    def is_error(self) -> bool:
        return self.exception_code is not None


def read_request(device_id: int, function: int, address: int, count: int) -> bytes:
    """The frame that asks ``device_id`` for ``count`` registers from ``address``."""
    if function not in READ_FUNCTIONS:
        raise ValueError(f"function {function} is not a register read")
    if not 0 <= device_id <= 247:
        raise ValueError(f"slave address {device_id} outside 0..247")
    if not 1 <= count <= MAX_READ_COUNT or not 0 <= address <= 0xFFFF - (count - 1):
        raise ValueError(f"{count} registers from 0x{address:04X} is not a valid read")
    return with_crc(
        bytes((device_id, function)) + address.to_bytes(2, "big") + count.to_bytes(2, "big")
    )


def reply_length(buffer: bytes | bytearray) -> int | None:
    """How long the reply at the start of ``buffer`` is, once enough of it has arrived.

    None while too little is there to say; for a function the master never
    asks for the length cannot be known, and the caller's timeout ends it.
    """
    if len(buffer) < 2:
        return None
    function = buffer[1]
    if function & EXCEPTION_BIT:
        return EXCEPTION_LENGTH
    if function not in READ_FUNCTIONS or len(buffer) < 3:
        return None
    return 5 + buffer[2]


def parse_reply(frame: bytes | bytearray, function: int) -> RegisterReply:
    """A whole reply frame to a read of ``function``; raises ``ProtocolError`` if it is not one."""
    if len(frame) < EXCEPTION_LENGTH:
        raise TruncatedError(f"{len(frame)} bytes is no reply")
    received = int.from_bytes(frame[-2:], "little")
    computed = crc16(memoryview(frame)[:-2])
    if received != computed:
        raise CrcError(received=received, computed=computed)
    dev_id, got = frame[0], frame[1]
    if got == function | EXCEPTION_BIT:
        if len(frame) != EXCEPTION_LENGTH:
            raise LengthError(f"exception reply of {len(frame)} bytes")
        return RegisterReply(dev_id, function, exception_code=frame[2])
    if got != function:
        raise UnexpectedFunctionError(f"asked with function {function}, answered with {got}")
    size = frame[2]
    if size % 2 or len(frame) != 5 + size:
        raise LengthError(f"byte count {size} in a reply of {len(frame)} bytes")
    data = frame[3 : 3 + size]
    registers = tuple(int.from_bytes(data[i : i + 2], "big") for i in range(0, size, 2))
    return RegisterReply(dev_id, function, registers)
