"""The C library, loaded once, at import, for the few calls Python's ``os`` lacks
(``mmap`` with MAP_PRIVATE at an address we keep, ``madvise``, ``renameat2``,
``sync_file_range``, ``fallocate``).

Loading a file or saving one never loads a library (audit hooks see nothing): every
caller takes its functions from here, resolved when its module is imported.

>>> function("no_such_function_anywhere", []) is None
True
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, Callable

__all__ = ["LIBC", "function", "last_errno"]


def _load() -> Any:
    if os.name != "posix":
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None


LIBC = _load()


def function(name: str, argtypes: list, restype: Any = ctypes.c_int) -> Callable[..., Any] | None:
    """libc's ``name`` with its signature set, or None where libc or that function is missing."""
    found = getattr(LIBC, name, None) if LIBC is not None else None
    if found is None:
        return None
    found.argtypes = argtypes
    found.restype = restype
    return found


def last_errno() -> int:
    """errno as the last call through :func:`function` left it."""
    return ctypes.get_errno()
