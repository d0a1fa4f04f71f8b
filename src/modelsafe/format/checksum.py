"""Payload checksums: xxh3-64, written as 16 lowercase hex digits."""

from __future__ import annotations

import xxhash

PLACEHOLDER = "0" * 16


def digest(data) -> str:
    """The checksum of a bytes-like object (memoryview, numpy array, bytes)."""
    return xxhash.xxh3_64_hexdigest(data)
