"""Frozen value types that are cheap to make: the hot path makes several per frame.

A frozen dataclass's generated ``__init__`` stores each field through
``object.__setattr__``, a slow generic call (a five-field value costs ~0.45 µs,
a plain slots class ~0.11 µs). ``quick_init`` gives a frozen, slotted
dataclass an ``__init__`` with the same signature and defaults that fills
the value in as a plain slotted twin of its class (``self.x = x``, the
interpreter's own slot store) and then makes it the class's (``__class__``
assignment, allowed between classes of one layout), or through the slots'
own descriptors where a twin cannot stand in: everything else (frozen,
equality, hashing, repr, match) stays the dataclass's.

Calling a class with keyword arguments costs more again: ``type.__call__``
packs them into a dict for ``__init__`` (~0.25 µs for a dozen). ``maker(cls)``
is a plain function with the class's signature that builds the same value
without going through ``type.__call__``; the few places that make a value per
frame with many keywords use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

T = TypeVar("T")
P = ParamSpec("P")

_MISSING = dataclasses.MISSING
_TWIN_INIT_FIELDS = 4  # an ``__init__`` fills a twin from this many fields up (see ``_twin``)


def _check(cls: type) -> list[dataclasses.Field[Any]]:
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: quick_init takes a frozen dataclass with slots")
    if hasattr(cls, "__post_init__"):
        raise TypeError(f"{cls.__name__}: quick_init cannot run __post_init__")
    fields = list(dataclasses.fields(cls))
    for f in fields:
        if not f.init:
            raise TypeError(f"{cls.__name__}.{f.name}: quick_init needs every field in __init__")
    return fields


def _twin(cls: type) -> type | None:
    """A plain slotted class with ``cls``'s slots: the same layout, without ``__setattr__``.

    A value is filled in as a twin (``self.x = x``: the interpreter's own slot
    store, several times cheaper than a descriptor's ``__set__`` call) and then
    made a ``cls`` by assigning ``__class__``, which CPython allows between
    classes of the same layout. None when ``cls`` does not allow it (a base
    class of its own, say): then the descriptors are called.
    """
    if cls.__bases__ != (object,):
        return None
    twin = type(f"{cls.__name__}Twin", (), {"__slots__": cls.__dict__["__slots__"]})
    probe: Any = object.__new__(twin)
    try:
        probe.__class__ = cls
    except TypeError:
        return None
    return twin


def _build(cls: type, *, init: bool) -> Callable[..., Any]:
    """``__init__(self, ...)`` (init) or ``make(...) -> cls``, storing through the slots."""
    fields = _check(cls)
    twin = _twin(cls)
    # An ``__init__`` gets a ``cls`` to fill: turning it into the twin first costs a
    # generic setattr, which pays off only with a few fields to store.
    if init and len(fields) < _TWIN_INIT_FIELDS:
        twin = None
    names: dict[str, Any] = {
        "_MISSING": _MISSING,
        "_new": object.__new__,
        "_cls": cls,
        "_twin": twin,
        "_setattr": object.__setattr__,
    }
    args: list[str] = ["self"] if init else []
    body: list[str] = []
    if twin is None:
        body += [] if init else ["self = _new(_cls)"]
    else:
        body += ['_setattr(self, "__class__", _twin)'] if init else ["self = _new(_twin)"]
    keyword_only = False
    for f in fields:
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
            body.append(f"if {f.name} is _MISSING: {f.name} = _factory_{f.name}()")
        else:
            args.append(f.name)
        store = f"self.{f.name} = {f.name}" if twin else f"_set_{f.name}(self, {f.name})"
        body.append(store)
    if twin is not None:
        body.append("self.__class__ = _cls")
    body.append("return None" if init else "return self")
    source = (
        f"def outer({', '.join(names)}):\n"
        f"    def fn({', '.join(args)}):\n"
        + "".join(f"        {line}\n" for line in body)
        + "    return fn\n"
    )
    scope: dict[str, Any] = {}
    exec(source, {}, scope)  # noqa: S102 - our own fields' names, as dataclasses itself does
    fn: Callable[..., Any] = scope["outer"](**names)
    fn.__qualname__ = f"{cls.__qualname__}.{'__init__' if init else 'make'}"
    fn.__doc__ = None if init else cls.__doc__
    return fn


def quick_init(cls: type[T]) -> type[T]:
    """Replace a frozen slots dataclass's ``__init__``; any other class is refused."""
    setattr(cls, "__init__", _build(cls, init=True))  # noqa: B010 - a method replaced on purpose
    return cls


def maker(cls: Callable[P, T]) -> Callable[P, T]:
    """A function making ``cls`` values as ``cls(...)`` would, without ``type.__call__``."""
    assert isinstance(cls, type)
    return _build(cls, init=False)
