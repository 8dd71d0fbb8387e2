"""Cover opened, inferred for devices that do not report openings themselves.

A device that says the cover was displaced (EM400 position "tilt", a
cover-mounted distance sensor knocked over) forces ``cover_open``; a tilt
sensor past ``OPEN_TILT_DEG`` raises it through the gateway's debounce. The
alarm carries the evidence. Devices with their own opened/closed events
(SCN-1) are left to those.
"""

from __future__ import annotations

from gateway.config import Thresholds
from gateway.edge.alarm import AlarmKind, Debounce
from gateway.edge.rules import Check, Force, Verdict

OPEN_TILT_DEG = 40.0  # a cover this far from its installed angle has been lifted


def verdicts(
    *,
    displaced: bool | None,
    tilt: float | None,
    routine: bool,
    thr: Thresholds,
    rule: Debounce,
) -> list[Verdict]:
    evidence: dict[str, object] = {}
    if displaced is not None:
        evidence["cover_displaced"] = displaced
    if tilt is not None:
        evidence["tilt_deg"] = round(tilt, 2)
    if displaced:
        return [
            Force(
                AlarmKind.COVER_OPEN,
                "",
                active=True,
                value=tilt,
                unit="deg" if tilt is not None else None,
                extra={"evidence": evidence},
            )
        ]
    if tilt is not None:
        flat = tilt < thr.tilt_deg - thr.tilt_clear_margin_deg
        return [
            Check(
                AlarmKind.COVER_OPEN,
                "",
                bad=tilt >= OPEN_TILT_DEG,
                good=flat and routine,
                rule=rule,
                value=tilt,
                unit="deg",
                threshold=OPEN_TILT_DEG,
                extra={"evidence": evidence},
            )
        ]
    if displaced is False and routine:
        return [
            Force(
                AlarmKind.COVER_OPEN,
                "",
                active=False,
                only_if_active=True,
                extra={"evidence": evidence},
            )
        ]
    return []
