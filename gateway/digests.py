"""SHA-256 and BLAKE2b without importing ``hashlib``.

``hashlib`` loads OpenSSL's libcrypto at import (~3.8 MiB of an idle
daemon's RSS) even when all it is asked for is a digest that CPython also
builds in. The standard library's ``random`` does the same for SHA-512
("hashlib is pretty heavy to load, try lean internal module first"). The
digests are the same bytes either way; an interpreter built without the
internal modules falls back to ``hashlib``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Protocol


class Hash(Protocol):
    def digest(self) -> bytes: ...
    def hexdigest(self) -> str: ...


def _lean(*names: tuple[str, str]) -> Callable[..., Any]:
    """The first of (module, attribute) that imports; ``hashlib``'s as the last resort."""
    for module, attr in names:
        try:
            found: Callable[..., Any] = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            continue
        return found
    raise ImportError(f"none of {names}")  # pragma: no cover - hashlib always has them


# CPython 3.11 names the built-in SHA-256 module _sha256; 3.12 renamed it _sha2.
sha256: Callable[[bytes], Hash] = _lean(
    ("_sha256", "sha256"), ("_sha2", "sha256"), ("hashlib", "sha256")
)
blake2b: Callable[..., Hash] = _lean(("_blake2", "blake2b"), ("hashlib", "blake2b"))
"""``blake2b(data, digest_size=N)``, as ``hashlib.blake2b``."""
