"""Open whatever a path names — a single file or a checkpoint directory — as a Source.

A Source exposes ``path``, ``manifest``, ``records`` (name -> TensorRecord),
``aliases``, ``buffers(lazy=..., mmap=...)``, ``verify_record(record, base)`` and ``close()``.
Directory layouts register an opener with :func:`register_directory_opener`.
"""

from __future__ import annotations

import os
import stat
from typing import Any, Callable, Protocol

import numpy as np

from .errors import CheckpointNotFoundError, CorruptCheckpointError
from .format.manifest import TensorRecord
from .foreign import open_file
from .storage import local_path


class Source(Protocol):
    path: str
    manifest: dict
    records: dict[str, TensorRecord]
    aliases: dict[str, str]

    def buffers(self, *, lazy: bool = False, mmap: bool = True) -> dict[str | None, np.ndarray]: ...
    def verify_record(self, record: TensorRecord, base: np.ndarray) -> None: ...
    def close(self) -> None: ...


# (predicate on a directory path, opener) tried in order
_DIRECTORY_OPENERS: list[tuple[Callable[[str], bool], Callable[..., Source]]] = []


def register_directory_opener(matches: Callable[[str], bool], opener: Callable[..., Source]) -> None:
    _DIRECTORY_OPENERS.append((matches, opener))


def open_source(path: Any, *, storage_options: dict | None = None) -> Source:
    """Open ``path`` (file or checkpoint directory) for reading."""
    path = local_path(path)
    if os.path.isdir(path):
        for matches, opener in _DIRECTORY_OPENERS:
            if matches(path):
                return opener(path)
        raise CheckpointNotFoundError(
            f"{path}: is a directory but not a modelsafe checkpoint (no manifest.json); "
            "give a file saved with ms.save or a checkpoint directory",
            path=path,
        )
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"{path}: no such file or checkpoint; check the path", path=path)
    if not stat.S_ISREG(os.stat(path).st_mode):  # opening a FIFO would block forever
        raise CorruptCheckpointError(
            f"{path}: is not a regular file (a pipe, socket or device); give a file saved with ms.save", path=path
        )
    return open_file(path)
