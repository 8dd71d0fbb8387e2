"""Gas: one alarm per gas kind; oxygen alarms when there is too little of it."""

from __future__ import annotations

from collections.abc import Mapping

from gateway.config import Thresholds
from gateway.edge.alarm import AlarmKind, Debounce
from gateway.edge.rules import Check

LOW_SIDE = frozenset({"O2"})  # too little is the danger


def checks(gas: Mapping[str, tuple[float, str]], thr: Thresholds, rule: Debounce) -> list[Check]:
    out = []
    for raw_name, (value, unit) in gas.items():
        name = raw_name.upper()
        limit = thr.gas.get(name)
        if limit is None:
            continue  # a gas with no threshold is reported, not judged (bounds the subs too)
        margin = thr.gas_clear_margin.get(name, 0.0)
        low = name in LOW_SIDE
        out.append(
            Check(
                AlarmKind.GAS,
                name,
                bad=value <= limit if low else value >= limit,
                good=value > limit + margin if low else value < limit - margin,
                rule=rule,
                value=value,
                unit=unit,
                threshold=limit,
            )
        )
    return out
