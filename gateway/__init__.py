"""covergw: the edge gateway for smart manhole covers."""

import importlib
import importlib.machinery
import sys
import types
from typing import Any

__version__ = "0.1.0"


def _defer(name: str, *, bind: bool = True) -> None:
    """Import NAME at its first use instead of now.

    paho imports ``urllib.request`` (and with it ``http.client``, ``email``,
    ``tempfile``: ~2 MiB of an idle daemon's ~32) only to read proxy settings
    when PySocks is installed. Until then NAME is a placeholder module whose
    first attribute lookup imports the real one and takes its place.
    ``importlib.util.LazyLoader`` cannot do this on Python 3.11: an ``import``
    statement reads ``__spec__``, which makes it load at once.
    """
    if name in sys.modules:
        return
    parent, _, child = name.rpartition(".")
    placeholder = types.ModuleType(name)
    placeholder.__spec__ = importlib.machinery.ModuleSpec(name, None)

    def load(attr: str) -> Any:
        if sys.modules.get(name) is placeholder:
            del sys.modules[name]
        real = importlib.import_module(name)  # sets the parent's attribute to it
        return getattr(real, attr)

    placeholder.__getattr__ = load  # type: ignore[method-assign]
    sys.modules[name] = placeholder
    if parent and bind:  # ``import a.b`` then ``a.b.f()`` reads the package's attribute
        setattr(importlib.import_module(parent), child, placeholder)


_defer("urllib.request")
# asyncio, aiomqtt and paho import ``ssl`` (and asyncio its TLS protocol, which
# reads ``ssl`` at import) whether or not TLS is configured; without TLS the
# daemon never touches them. asyncio takes its submodule by ``from . import``.
_defer("ssl")
_defer("asyncio.sslproto", bind=False)
# paho imports ``hashlib`` (OpenSSL's libcrypto, ~3.8 MiB) for websockets only;
# our own digests come from gateway.digests.
_defer("hashlib")
