"""Where bytes go: local files (atomic, durable) and object stores through fsspec (:mod:`.remote`)."""

from __future__ import annotations

import os
from typing import Any

from ..errors import StorageError


def is_url(path: Any) -> bool:
    """True for an fsspec URL (``s3://bucket/key``, ``memory://x``); ``file://`` counts as local.

    >>> is_url("s3://bucket/run"), is_url("runs/exp1"), is_url("file:///data/run")
    (True, False, False)
    """
    if not isinstance(path, (str, os.PathLike)):
        return False
    text = os.fspath(path)
    return isinstance(text, str) and "://" in text and not text.startswith("file://")


def local_path(path: Any, *, what: str = "file") -> str:
    """``path`` as a local path (``file://`` stripped); a URL where only local paths work is a StorageError.

    >>> local_path("file:///data/run")
    '/data/run'
    """
    text = os.fspath(path)
    if text.startswith("file://"):
        return text[len("file://"):]
    if "://" in text:
        raise StorageError(
            f"{text}: this operation needs a local {what}; remote URLs (s3://) work with ms.save, ms.load, "
            "ms.open, ms.load_into and ms.Checkpoints. Copy it to a local path first",
            path=text,
        )
    return text
