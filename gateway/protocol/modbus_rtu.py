"""Modbus RTU frames as the master sees them: read requests out, register replies in.

Only what the gateway asks of a slave: read holding (3) or input (4)
registers. The frames are pymodbus's (its PDUs and its RTU framer, with its
CRC-16); the transport that carries them is ours (``gateway/drivers/rtu.py``).
What this module adds is the distrust: a reply is checked for its CRC, its
function and its length before pymodbus decodes it, so pymodbus only ever
sees a sound frame and any bytes at all end in a reply or in one of our
``ProtocolError`` subclasses, with the reason named.
"""

from __future__ import annotations

from dataclasses import dataclass

from pymodbus.exceptions import ModbusException
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU, ExceptionResponse, ModbusPDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersRequest

from gateway.errors import CrcError, LengthError, ProtocolError, TruncatedError

READ_HOLDING = 3
READ_INPUT = 4
READ_FUNCTIONS = (READ_HOLDING, READ_INPUT)
MAX_READ_COUNT = ReadHoldingRegistersRequest.MAX_COUNT  # 125: the spec's 250 data bytes
EXCEPTION_BIT = 0x80
EXCEPTION_LENGTH = ExceptionResponse.rtu_frame_size  # address, function | 0x80, code, CRC

_REQUESTS: dict[int, type[ModbusPDU]] = {
    READ_HOLDING: ReadHoldingRegistersRequest,
    READ_INPUT: ReadInputRegistersRequest,
}
_FRAMER = FramerRTU(DecodePDU(is_server=False))  # a master's framer: it decodes replies
LENGTHS_KEPT = 256  # reply heads whose length is remembered (a bus's slaves use a handful)
_LENGTHS: dict[bytes, int | None] = {}  # a reply's first bytes → its length, as pymodbus says


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
    """The frame that asks ``device_id`` for ``count`` registers from ``address``.

    Built by pymodbus; the bus driver builds each slave's requests once and
    sends the same bytes every poll.
    """
    if function not in READ_FUNCTIONS:
        raise ValueError(f"function {function} is not a register read")
    if not 0 <= device_id <= 247:
        raise ValueError(f"slave address {device_id} outside 0..247")
    if not 1 <= count <= MAX_READ_COUNT or not 0 <= address <= 0xFFFF - (count - 1):
        raise ValueError(f"{count} registers from 0x{address:04X} is not a valid read")
    pdu = _REQUESTS[function](address=address, count=count, dev_id=device_id)
    return _FRAMER.buildFrame(pdu)


def reply_length(buffer: bytes | bytearray) -> int | None:
    """How long the reply at the start of ``buffer`` is, once enough of it has arrived.

    None while too little is there to say; for a function the master never
    asks for the length is not ours to know (pymodbus would index past a
    short buffer for some, 24 and 43), and the caller's timeout ends it.
    """
    if len(buffer) < 2:
        return None
    function = buffer[1]
    if not function & EXCEPTION_BIT and function not in READ_FUNCTIONS:
        return None
    head = bytes(buffer[:3])
    known = _LENGTHS.get(head, -1)  # every poll's replies start alike: pymodbus asked once
    if known != -1:
        return known
    pdu_class = _FRAMER.decoder.lookupPduClass(head)
    length = None if pdu_class is None else pdu_class.calculateRtuFrameSize(head) or None
    if len(head) == 3 and len(_LENGTHS) < LENGTHS_KEPT:  # 0 above: the byte count not in yet
        _LENGTHS[head] = length
    return length


def parse_reply(frame: bytes | bytearray, function: int) -> RegisterReply:
    """A whole reply frame to a read of ``function``; raises ``ProtocolError`` if it is not one."""
    if len(frame) < EXCEPTION_LENGTH:
        raise TruncatedError(f"{len(frame)} bytes is no reply")
    data = bytes(frame)
    body = data[:-2]
    # pymodbus's CRC value is the two bytes as sent, read big-endian (the
    # CRC-16/MODBUS register byte-swapped); CrcError names the register itself.
    if not FramerRTU.check_CRC(body, int.from_bytes(data[-2:], "big")):
        computed = FramerRTU.compute_CRC(body).to_bytes(2, "big")
        raise CrcError(
            received=int.from_bytes(data[-2:], "little"),
            computed=int.from_bytes(computed, "little"),
        )
    got = data[1]
    if got == function | EXCEPTION_BIT:
        if len(data) != EXCEPTION_LENGTH:
            raise LengthError(f"exception reply of {len(data)} bytes")
    elif got != function:
        raise UnexpectedFunctionError(f"asked with function {function}, answered with {got}")
    elif data[2] % 2 or len(data) != 5 + data[2]:
        raise LengthError(f"byte count {data[2]} in a reply of {len(data)} bytes")
    # exp_devid 0: the caller checks whose reply it is (pymodbus would log and drop it).
    try:
        _, pdu = _FRAMER.handleFrame(data, 0, 0)
    except ModbusException as err:  # not seen for a frame checked as above; never let it out
        raise ProtocolError(f"pymodbus could not decode the reply: {err}") from err
    if pdu is None:
        raise ProtocolError("pymodbus found no reply in a sound frame")
    if isinstance(pdu, ExceptionResponse):
        return RegisterReply(pdu.dev_id, function, exception_code=pdu.exception_code)
    return RegisterReply(pdu.dev_id, function, tuple(pdu.registers))
