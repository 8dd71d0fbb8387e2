"""Frozen value types that are cheap to make: the hot path makes several per frame.

A frozen dataclass's generated ``__init__`` stores each field through
``object.__setattr__``, a slow generic call (a five-field value costs ~0.45 µs,
a plain slots class ~0.11 µs). ``quick_init`` gives a frozen, slotted
dataclass an ``__init__`` with the same signature and defaults that stores
through the slots' own descriptors instead: ~40 % less per value, and
everything else (frozen, equality, hashing, repr, match) stays the dataclass's.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING = dataclasses.MISSING


def quick_init(cls: type[T]) -> type[T]:
    """Replace a frozen slots dataclass's ``__init__``; any other class is refused."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: quick_init takes a frozen dataclass with slots")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: quick_init cannot run __post_init__")
    names: dict[str, Any] = {}
    args: list[str] = []
    body: list[str] = []
    keyword_only = False
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not f.init:
            raise TypeError(f"{cls.__name__}.{f.name}: quick_init needs every field in __init__")
        names[f"_set_{f.name}"] = getattr(cls, f.name).__set__
        if f.kw_only and not keyword_only:
            args.append("*")
            keyword_only = True
        if f.default is not _MISSING:
            names[f"_default_{f.name}"] = f.default
            args.append(f"{f.name}=_default_{f.name}")
        elif f.default_factory is not _MISSING:
            names[f"_factory_{f.name}"] = f.default_factory
            args.append(f"{f.name}=_MISSING")
            body.append(f"    if {f.name} is _MISSING: {f.name} = _factory_{f.name}()")
        else:
            args.append(f.name)
        body.append(f"    _set_{f.name}(self, {f.name})")
    names["_MISSING"] = _MISSING
    source = f"def __init__(self, {', '.join(args)}) -> None:\n" + "\n".join(body or ["    pass"])
    source = f"def make({', '.join(names)}):\n" + "\n".join(
        "    " + line for line in source.splitlines()
    )
    source += "\n    return __init__\n"
    scope: dict[str, Any] = {}
    exec(source, {}, scope)  # noqa: S102 - our own fields' names, as dataclasses itself does
    init = scope["make"](**names)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    setattr(cls, "__init__", init)  # noqa: B010 - a method replaced on purpose
    return cls
