"""Fixed-size construct Structs as ``struct`` formats, derived from the definitions.

construct is the one definition of every wire format here; interpreting it
(even compiled) costs several microseconds a record, which is most of a
decode. Most records are a fixed run of integer and byte-string fields, and
for those ``fixed_layout`` derives the equivalent ``struct.Struct`` from the
construct fields themselves, so there is still one definition. The tests
hold both forms to the same reading on arbitrary bytes.

Where the daemon should not import construct at all (SCN-1, its hot path and
its idle memory), the layouts are derived ahead of time: ``layout_literal``
writes one as Python source for a generated, checked-in module, and a test
regenerates that module from construct and fails when they differ.
"""

from __future__ import annotations

import struct
from collections import namedtuple
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class LayoutError(TypeError):
    """A construct definition that is not a fixed run of integer and byte fields."""


@dataclass(frozen=True, slots=True)
class FixedLayout:
    """A fixed-size Struct as one ``struct`` format.

    ``length`` is the value of a leading ``length`` Const (SCN-1's L byte),
    checked by the caller and not part of ``fields``.
    """

    length: int | None
    fields: struct.Struct
    names: tuple[str, ...]


def _code(field: Any) -> tuple[str, str]:
    """(byte order, struct code) of one construct field, or LayoutError."""
    fmt = getattr(field, "fmtstr", None)
    if isinstance(fmt, str) and fmt[:1] in "<>" and len(fmt) == 2:
        return ("" if fmt[1] in "bB" else fmt[0]), fmt[1]  # one byte has no order
    if type(field).__name__ == "Bytes" and isinstance(getattr(field, "length", None), int):
        return "", f"{field.length}s"
    raise LayoutError(f"not a fixed integer or byte field: {field!r}")


def fixed_layout(definition: Any) -> FixedLayout:
    """Derive the ``struct`` layout of a construct Struct of fixed fields."""
    length: int | None = None
    order = ""
    codes = ""
    names: list[str] = []
    for renamed in getattr(definition, "subcons", ()):
        field = renamed.subcon
        if renamed.name == "length" and type(field).__name__ == "Const" and not names:
            length = int(field.value)
            continue
        if not renamed.name:
            raise LayoutError(f"unnamed field in {definition!r}")
        field_order, code = _code(field)
        if field_order and order and field_order != order:
            raise LayoutError(f"mixed byte order at field {renamed.name!r}")
        order = order or field_order
        codes += code
        names.append(renamed.name)
    if not names:
        raise LayoutError(f"no fields in {definition!r}")
    return FixedLayout(length, struct.Struct((order or ">") + codes), tuple(names))


def layout_literal(layout: FixedLayout) -> str:
    """``layout`` as the Python expression that makes it again (for generated modules)."""
    names = ", ".join(f'"{name}"' for name in layout.names)
    if len(layout.names) == 1:
        names += ","
    return f'FixedLayout({layout.length!r}, struct.Struct("{layout.fields.format}"), ({names}))'


Parse = Callable[..., Any]


def _as_tuples(definition: Any) -> tuple[FixedLayout, Any] | None:
    """The layout and a named-tuple type for its fields, where both can be had."""
    try:
        layout = fixed_layout(definition)
        if layout.length is not None:  # SCN-1's L byte: the caller's to check
            return None
        return layout, namedtuple("Fields", layout.names)
    except (LayoutError, ValueError):  # ValueError: a field name namedtuple refuses
        return None


def fast_parser(definition: Any) -> Parse:
    """``parse(data, offset=0)`` for a fixed-size Struct: fields by attribute.

    The derived ``struct`` form where the definition allows it (a named tuple
    of the fields), else the compiled construct parser. The caller checks that
    ``data`` holds the definition's size from ``offset``.
    """
    derived = _as_tuples(definition)
    if derived is None:
        compiled = definition.compile()
        size = definition.sizeof()

        def parse_compiled(data: bytes, offset: int = 0) -> Any:
            return compiled.parse(data[offset : offset + size])

        return parse_compiled
    layout, fields = derived
    unpack = layout.fields.unpack_from
    make = fields._make

    def parse(data: bytes, offset: int = 0) -> Any:
        return make(unpack(data, offset))

    return parse
