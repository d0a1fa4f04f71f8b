"""Where bytes go: local files (atomic, durable); object stores come through fsspec later."""

from __future__ import annotations

import os
from typing import Any

from ..errors import StorageError


def local_path(path: Any, *, what: str = "file") -> str:
    """``path`` as a local path (``file://`` stripped); remote URLs get a clear StorageError.

    >>> local_path("file:///data/run")
    '/data/run'
    """
    text = os.fspath(path)
    if text.startswith("file://"):
        return text[len("file://"):]
    if "://" in text:
        raise StorageError(
            f"{text}: remote paths (fsspec URLs such as s3://) are not supported by this modelsafe yet; "
            f"use a local {what} and upload it",
            path=text,
        )
    return text
