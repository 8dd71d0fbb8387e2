"""Typed reads from parsed TOML that fail with the key path and the reason.

Every configuration table in the gateway is read through a ``Table``, so a
bad value anywhere is refused the same way: ``uplink.port: must be 1–65535,
got 70000``; a key nobody reads is refused too (a typo must not be ignored),
with the nearest known key as a hint. Numbers must be finite (TOML allows
``nan`` and ``inf``; no key of ours means them).

A ``Table`` given an ``Errors`` collects instead of raising where it can go on
(a bad value of a key that has a default: the default stands in), so one pass
reports every mistake; ``Errors.collect()`` lets a caller go on past a
section that had to stop. Without ``Errors`` the first mistake raises.
A secret (``secret=True``) is never echoed in an error.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Mapping
from enum import StrEnum
from typing import Any, TypeVar

from gateway.errors import ConfigError, InvalidConfigError

E = TypeVar("E", bound=StrEnum)
T = TypeVar("T")
_MISSING = object()


class Errors:
    """The errors of one pass over a configuration."""

    def __init__(self) -> None:
        self.found: list[ConfigError] = []

    def add(self, err: ConfigError) -> None:
        self.found.append(err)

    @contextlib.contextmanager
    def collect(self) -> Iterator[None]:
        """Record a ``ConfigError`` that ends a section, and go on with the next one."""
        try:
            yield
        except ConfigError as err:
            self.add(err)

    def raise_if_any(self) -> None:
        if self.found:
            raise InvalidConfigError(self.found)


class Table:
    def __init__(
        self, data: Mapping[str, Any], path: str = "", *, errors: Errors | None = None
    ) -> None:
        if not isinstance(data, Mapping):
            raise ConfigError(path, f"must be a table, got {type(data).__name__}")
        self._data = data
        self.path = path
        self.errors = errors
        self._read: set[str] = set()

    def _fail(self, name: str, reason: str, default: Any) -> Any:
        """Refuse a value: collected (the default stands in) when possible, else raised."""
        err = ConfigError(self.key(name), reason)
        if self.errors is None or default is _MISSING:
            raise err
        self.errors.add(err)
        return default

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

    def text(self, name: str, default: Any = _MISSING, *, secret: bool = False) -> Any:
        value = self._get(name, default)
        if value is not default and not isinstance(value, str):
            shown = "a secret, not shown" if secret else repr(value)
            return self._fail(name, f"must be a string, got {shown}", default)
        return value

    def flag(self, name: str, default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if value is not default and not isinstance(value, bool):
            return self._fail(name, f"must be true or false, got {value!r}", default)
        return value

    def integer(
        self, name: str, default: Any = _MISSING, *, lo: int | None = None, hi: int | None = None
    ) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            return self._fail(name, f"must be an integer, got {value!r}", default)
        problem = _range_problem(value, lo, hi)
        return value if problem is None else self._fail(name, problem, default)

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
            return self._fail(name, f"must be a number, got {value!r}", default)
        if not math.isfinite(value):
            return self._fail(name, f"must be a finite number, got {value!r}", default)
        problem = _range_problem(value, lo, hi)
        return float(value) if problem is None else self._fail(name, problem, default)

    def choice(self, name: str, enum: type[E], default: Any = _MISSING) -> Any:
        value = self._get(name, default)
        if value is default:
            return value
        try:
            return enum(value)
        except ValueError:
            allowed = ", ".join(e.value for e in enum)
            return self._fail(name, f"must be one of {allowed}, got {value!r}", default)

    def names(self) -> list[str]:
        """The keys of a table of named sub-tables (``[profiles.NAME]``)."""
        return list(self._data)

    def table(self, name: str, *, required: bool = False) -> Table:
        value = self._get(name, _MISSING if required else {})
        return Table(value, self.key(name), errors=self.errors)

    def tables(self, name: str) -> list[Table]:
        """An array of tables (``[[name]]``)."""
        value = self._get(name, [])
        if not isinstance(value, list):
            raise ConfigError(self.key(name), "must be an array of tables ([[...]])")
        return [Table(v, f"{self.key(name)}[{i}]", errors=self.errors) for i, v in enumerate(value)]

    def convert(self, name: str, func: Callable[[Any], T], default: Any = _MISSING) -> T:
        value = self._get(name, default)
        if value is default:
            return value  # type: ignore[no-any-return]
        try:
            return func(value)
        except (TypeError, ValueError) as err:
            return self._fail(name, str(err), default)  # type: ignore[no-any-return]

    def done(self) -> None:
        """Refuse keys that nothing read: they are typos or from another version."""
        unknown = sorted(set(self._data) - self._read)
        found = [ConfigError(self.key(name), self._unknown(name)) for name in unknown]
        if not found:
            return
        if self.errors is None:
            raise found[0]
        for err in found:
            self.errors.add(err)

    def _unknown(self, name: str) -> str:
        import difflib  # noqa: PLC0415 - only for a misspelt key

        near = difflib.get_close_matches(name, sorted(self._read), n=1, cutoff=0.6)
        return f"unknown key (did you mean {near[0]!r}?)" if near else "unknown key"


def _range_problem(value: float, lo: float | None, hi: float | None) -> str | None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        if lo is not None and hi is not None:
            return f"must be {lo}–{hi}, got {value}"
        if lo is not None:
            return f"must be at least {lo}, got {value}"
        return f"must be at most {hi}, got {value}"
    return None


def check_range(path: str, value: float, lo: float | None, hi: float | None) -> None:
    """Raise ``ConfigError`` for a value outside ``lo``–``hi`` or not finite."""
    if not math.isfinite(value):
        raise ConfigError(path, f"must be a finite number, got {value!r}")
    problem = _range_problem(value, lo, hi)
    if problem is not None:
        raise ConfigError(path, problem)


def hostport(value: object) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:1883`` for IPv6), for ``Table.convert``."""
    if not isinstance(value, str) or ":" not in value:
        raise ValueError(f"must be HOST:PORT, got {value!r}")
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be 1–65535, got {port!r}")
    return host.strip("[]"), int(port)
