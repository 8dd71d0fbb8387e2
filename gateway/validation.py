"""One validation for ``check-config``, ``run`` and reload: the file, then its registry.

What ``check-config`` accepts, ``run`` starts with, and a reload applies; what
one refuses, the others refuse with the same words. A registry that cannot be
read as UTF-8 text is a configuration error (``gateway.registry``), not a
crash; rows that do not parse are reported and left out, as before.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from gateway.config import GatewayConfig, load_config
from gateway.errors import ConfigError
from gateway.registry import Registry, RowError, parse_registry

REGISTRY_KEY = "gateway.registry"


@dataclass(frozen=True)
class Validated:
    config: GatewayConfig
    registry: Registry
    registry_errors: tuple[RowError, ...]


def read_registry(path: Path) -> tuple[Registry, list[RowError]]:
    """The census, or ``ConfigError`` naming ``gateway.registry`` and why it cannot be read."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ConfigError(REGISTRY_KEY, f"cannot read {path}: {err.strerror or err}") from err
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(
            REGISTRY_KEY,
            f"{path} is not UTF-8 text (byte {err.start}); save the census as CSV UTF-8",
        ) from err
    return parse_registry(text)


def validate(path: Path) -> Validated:
    """The configuration at ``path`` and its registry; ``ConfigError`` lists every error."""
    config = load_config(path)
    if config.registry is None:
        return Validated(config, Registry(), ())
    registry, errors = read_registry(config.registry)
    return Validated(config, registry, tuple(errors))


def check_config(path: Path) -> int:
    """``covergw check-config``: 0 valid, 2 refused (every error listed), 1 rows left out."""
    try:
        validated = validate(path)
    except ConfigError as err:
        for line in err.lines():
            print(f"config refused: {line}", file=sys.stderr)
        return 2
    config = validated.config
    print(
        f"{path}: ok (gateway {config.gateway_id}, digest {config.digest}; "
        f"{len(config.radios)} radio, {len(config.udp)} udp, {len(config.modbus)} modbus"
        + "".join(
            f", {len(items)} {kind}"
            for kind, items in (("lorawan", config.lorawan), ("tcp", config.tcp))
            if items
        )
        + ")"
    )
    if config.registry is not None:
        print(f"{config.registry}: {len(validated.registry.covers)} covers")
        for error in validated.registry_errors:
            print(f"{config.registry}: {error}: row left out", file=sys.stderr)
        if validated.registry_errors:
            return 1
    return 0
