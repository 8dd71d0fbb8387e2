"""One exception root for the whole gateway, one subclass per failure kind.

Callers catch the layer's class (``ProtocolError``, ``ConfigError`` …) and
read fields, never parse messages.
"""

from __future__ import annotations

from enum import StrEnum


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""


class RejectReason(StrEnum):
    """Why a frame candidate was rejected; each has its own counter."""

    BAD_SYNC = "bad_sync"
    BAD_LENGTH = "bad_length"
    TRUNCATED = "truncated"
    BAD_CRC = "bad_crc"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_TYPE = "unknown_type"
    MALFORMED_TLV = "malformed_tlv"
    TRAILING_BYTES = "trailing_bytes"
    BAD_HEX = "bad_hex"


class ProtocolError(GatewayError):
    """A frame (or frame candidate) that cannot be accepted."""

    reason: RejectReason = RejectReason.MALFORMED_TLV

    def __init__(self, detail: str, *, offset: int | None = None) -> None:
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{self.reason.value}{where}: {detail}")
        self.detail = detail
        self.offset = offset


class SyncError(ProtocolError):
    reason = RejectReason.BAD_SYNC


class LengthError(ProtocolError):
    reason = RejectReason.BAD_LENGTH


class TruncatedError(ProtocolError):
    reason = RejectReason.TRUNCATED


class CrcError(ProtocolError):
    reason = RejectReason.BAD_CRC

    def __init__(self, *, received: int, computed: int) -> None:
        super().__init__(f"received 0x{received:04X}, computed 0x{computed:04X}")
        self.received = received
        self.computed = computed


class VersionError(ProtocolError):
    reason = RejectReason.UNSUPPORTED_VERSION


class UnknownTypeError(ProtocolError):
    reason = RejectReason.UNKNOWN_TYPE


class MalformedTlvError(ProtocolError):
    reason = RejectReason.MALFORMED_TLV


class TrailingBytesError(ProtocolError):
    reason = RejectReason.TRAILING_BYTES


class HexError(ProtocolError):
    reason = RejectReason.BAD_HEX


class RegisterDecodeError(GatewayError):
    """Modbus registers that do not fit the device profile."""


class ConfigError(GatewayError):
    """Configuration refused; ``path`` names the key (``uplink.port``)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.path = path
        self.reason = reason

    def lines(self) -> list[str]:
        """One line per error (``InvalidConfigError`` has several)."""
        return [str(self)]


class InvalidConfigError(ConfigError):
    """Every error found in one pass over a configuration, in file order."""

    def __init__(self, errors: list[ConfigError]) -> None:
        flat: list[ConfigError] = []
        for err in errors:
            flat += err.errors if isinstance(err, InvalidConfigError) else [err]
        reason = flat[0].reason if len(flat) == 1 else "; ".join(str(e) for e in flat)
        super().__init__(flat[0].path, reason)
        self.errors: tuple[ConfigError, ...] = tuple(flat)

    def __str__(self) -> str:
        return "; ".join(str(e) for e in self.errors)

    def lines(self) -> list[str]:
        return [str(e) for e in self.errors]


class TransportError(GatewayError):
    """A port, socket or bus failed; the driver reopens it with backoff."""


class StartupError(GatewayError):
    """Something the daemon needs at start is unavailable (a port in use, a state dir not
    writable): running would be pointless, and restarting at once would not help.

    ``what`` names the part or key (``udp.nbiot0``, ``gateway.state_dir``).
    """

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason
