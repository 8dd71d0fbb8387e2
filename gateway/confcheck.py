"""Typed reads from parsed TOML that fail with the key path and the reason.

Every configuration table in the gateway is read through a ``Table``, so a
bad value anywhere is refused the same way: ``uplink.port: must be 1–65535,
got 70000``; a key nobody reads is refused too (a typo must not be ignored).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, TypeVar

from gateway.errors import ConfigError

E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")
_MISSING = object()


class Table:
    def __init__(self, data: Mapping[str, Any], path: str = "") -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(path, f"must be a table, got {type(data).__name__}")
        self._data = data
        self.path = path
        self._read: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def has(self, name: str) -> bool:
        return name in self._data

    def _get(self, name: str, default: object) -> Any:
        self._read.add(name)
        if name in self._data:
            return self._data[name]
        if default is _MISSING:
            raise ConfigError(self.key(name), "is required")
        return default

    def text(self, name: str, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if value is not default and not isinstance(value, str):
            raise ConfigError(self.key(name), f"must be a string, got {value!r}")
        return value

    def flag(self, name: str, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if value is not default and not isinstance(value, bool):
            raise ConfigError(self.key(name), f"must be true or false, got {value!r}")
        return value

    def integer(
        self, name: str, default: Any = _MISSING, *, lo: int | None = None, hi: int | None = None
    ) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key(name), f"must be an integer, got {value!r}")
        _check_range(self.key(name), value, lo, hi)
        return value

    def number(
        self,
        name: str,
        default: Any = _MISSING,
        *,
        lo: float | None = None,
        hi: float | None = None,
    ) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(self.key(name), f"must be a number, got {value!r}")
        _check_range(self.key(name), value, lo, hi)
        return float(value)

    def choice(self, name: str, enum: type[E], default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        try:
            return enum(value)
        except ValueError:
            allowed = ", ".join(e.value for e in enum)
            raise ConfigError(self.key(name), f"must be one of {allowed}, got {value!r}") from None

    def names(self) -> list[str]:
        """The keys of a table of named sub-tables (``[profiles.NAME]``)."""
        return list(self._data)

    def table(self, name: str, *, required: bool = False) -> Table:
        value = self._get(name, _MISSING if required else {})
        return Table(value, self.key(name))

    def tables(self, name: str) -> list[Table]:
        """An array of tables (``[[name]]``)."""
        value = self._get(name, [])
        if not isinstance(value, list):
            raise ConfigError(self.key(name), "must be an array of tables ([[...]])")
        return [Table(v, f"{self.key(name)}[{i}]") for i, v in enumerate(value)]

    def convert(self, name: str, func: Callable[[Any], T], default: Any = _MISSING) -> T:
        value = self._get(name, default)
        if value is default:
            return value  # type: ignore[no-any-return]
        try:
            return func(value)
        except (TypeError, ValueError) as err:
            raise ConfigError(self.key(name), str(err)) from None

    def done(self) -> None:
        """Refuse keys that nothing read: they are typos or from another version."""
        unknown = sorted(set(self._data) - self._read)
        if unknown:
            raise ConfigError(self.key(unknown[0]), "unknown key")


def _check_range(path: str, value: float, lo: float | None, hi: float | None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            raise ConfigError(path, f"must be {lo}–{hi}, got {value}")
        if lo is not None:
            raise ConfigError(path, f"must be at least {lo}, got {value}")
        raise ConfigError(path, f"must be at most {hi}, got {value}")


def hostport(value: object) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:1883`` for IPv6), for ``Table.convert``."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"must be HOST:PORT, got {value!r}")
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be 1–65535, got {port!r}")
    return host.strip("[]"), int(port)
