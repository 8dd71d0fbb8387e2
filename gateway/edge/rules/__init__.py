"""The alarm rules: small functions of quantities and state, one kind per module.

A rule never touches an alarm machine. It returns what it concluded: a
``Check`` (a condition judged against a threshold, which the gateway's own
debounce turns into an alarm or not) or a ``Force`` (the device, or the
gateway's own count, says so outright). The engine applies them.

A rule called with ``quiet`` (the subject has no alarm machine away from
normal) leaves out the checks that are not bad: applied, they would change
nothing (a machine in its normal state stays so, and is not kept), and most
readings of most covers would otherwise make a few each for nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from gateway.edge.alarm import AlarmKind, Debounce
from gateway.values import maker, quick_init

Iso = Callable[[float], str]  # a time as the wire shows it
_EMPTY: Mapping[str, Any] = MappingProxyType({})


@quick_init
@dataclass(frozen=True, slots=True)
class Check:
    kind: AlarmKind
    sub: str
    bad: bool  # past the raise threshold
    good: bool  # past the clear margin
    rule: Debounce
    value: float | None
    unit: str
    threshold: float
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)


@quick_init
@dataclass(frozen=True, slots=True)
class Force:
    kind: AlarmKind
    sub: str
    active: bool
    at: float | None = None  # when it happened, if not the observation's time
    value: float | None = None
    unit: str | None = None
    threshold: float | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY)
    only_if_active: bool = False  # a clear that must not create a machine


Verdict = Check | Force

# Rules make several checks per reading, with keywords: without ``type.__call__``.
make_check = maker(Check)
