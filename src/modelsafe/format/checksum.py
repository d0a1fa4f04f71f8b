"""Payload checksums: xxh3-64, written as 16 lowercase hex digits."""

from __future__ import annotations

import xxhash

PLACEHOLDER = "0" * 16


def digest(data) -> str:
    """The checksum of a bytes-like object (memoryview, numpy array, bytes)."""
    return xxhash.xxh3_64_hexdigest(data)


def is_digest(value: object) -> bool:
    """True for one checksum as :func:`digest` writes it (a composite of chunk checksums is not one)."""
    return isinstance(value, str) and len(value) == len(PLACEHOLDER) and all(c in "0123456789abcdef" for c in value)
