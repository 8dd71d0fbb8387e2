"""gateway.digests gives hashlib's digests, byte for byte, without OpenSSL."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from gateway import digests


@given(st.binary(max_size=4096))
def test_sha256_is_hashlibs(data: bytes) -> None:
    assert digests.sha256(data).hexdigest() == hashlib.sha256(data).hexdigest()


@given(st.binary(max_size=4096), st.integers(min_value=1, max_value=64))
def test_blake2b_is_hashlibs(data: bytes, size: int) -> None:
    ours = digests.blake2b(data, digest_size=size).digest()
    assert ours == hashlib.blake2b(data, digest_size=size).digest()


def test_they_are_the_built_in_modules_not_openssls() -> None:
    assert digests.sha256.__module__ in {"_sha256", "_sha2"}
    assert digests.blake2b.__module__ == "_blake2"
