"""Open whatever a path names — a single file, a checkpoint directory, a run or ``RUN@selector`` — as a Source.

A Source exposes ``path``, ``manifest``, ``records`` (name -> TensorRecord),
``aliases``, ``buffers(lazy=..., mmap=...)``, ``verify_record(record, base)`` and ``close()``;
one that reads on demand (objects on a store, by byte ranges) also has ``sparse_buffers()``
(buffers shaped as ``buffers`` that hold only what was fetched) and ``fetch(records)``.
Directory layouts register an opener with :func:`register_directory_opener`; the
checkpoint manager registers the opener of ``RUN@selector`` addresses with
:func:`register_run_opener` (parsing: :mod:`modelsafe.addresses`).
"""

from __future__ import annotations

import os
import stat
from typing import Any, Callable, Protocol

import numpy as np

from .addresses import SELECTORS, Address, parse_address
from .errors import CheckpointNotFoundError, CorruptCheckpointError, InvalidArgumentError
from .foreign import open_file
from .format.manifest import TensorRecord
from .storage import is_url, local_path


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


# opens checkpoint ``selector`` of the run in a directory: (run, selector, storage_options=) -> Source
_RUN_OPENERS: list[Callable[..., Source]] = []


def register_directory_opener(matches: Callable[[str], bool], opener: Callable[..., Source], *, first: bool = False) -> None:
    """Add a directory layout; ``first``: tried before those registered earlier (a layout refining another)."""
    _DIRECTORY_OPENERS.insert(0 if first else len(_DIRECTORY_OPENERS), (matches, opener))


# opens a checkpoint directory on an object store: (url, storage_options) -> Source
_REMOTE_CHECKPOINT_OPENERS: list[Callable[[str, dict | None], Source]] = []


def register_run_opener(opener: Callable[[str, str], Source]) -> None:
    _RUN_OPENERS.append(opener)


def register_remote_checkpoint_opener(opener: Callable[[str, dict | None], Source]) -> None:
    _REMOTE_CHECKPOINT_OPENERS.append(opener)

def directory_opener(path: str) -> Callable[..., Source] | None:
    """The opener registered for directory ``path`` (the first whose predicate matches), or None."""
    return next((opener for matches, opener in _DIRECTORY_OPENERS if matches(path)), None)


def open_source(path: Any, *, storage_options: dict | None = None) -> Source:
    """Open ``path`` (file, checkpoint directory, run or ``RUN@selector``; local or a URL) for reading."""
    if is_url(path):
        return _open_remote(os.fspath(path), storage_options)
    path = local_path(path)
    address = parse_address(path)
    if address.selector is not None:
        return _open_address(address)
    if os.path.isdir(path):
        opener = directory_opener(path)
        if opener is not None:
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


def _open_address(address: Address) -> Source:
    """Open the checkpoint ``RUN@selector`` names; the run's Checkpoints decides which one it is."""
    if not os.path.isdir(address.path):
        if os.path.exists(address.path):
            raise InvalidArgumentError(
                f"{address.text}: {address.path} is a file, not a run directory; '@' picks one checkpoint of a run "
                f"({SELECTORS})", path=address.text, key="path",
            )
        raise CheckpointNotFoundError(
            f"{address.text}: no such file or checkpoint, and no run directory {address.path!r} "
            f"for {SELECTORS}; check the path", path=address.text,
        )
    return _RUN_OPENERS[-1](address.path, address.selector)


def _open_remote(url: str, storage_options: dict | None) -> Source:
    """A URL, read with range requests: a file or a checkpoint directory (header/manifest first, then
    only the tensors asked for); a run opens its checkpoint."""
    from .format.ranges import RangeFileSource
    from .storage.remote import kind_of, range_reader

    kind = kind_of(url, storage_options)
    address = parse_address(url)
    if kind is None and address.selector is not None:  # what exists is taken literally, as for local paths
        return _RUN_OPENERS[-1](address.path, address.selector, storage_options=storage_options)
    if kind == "file":
        return RangeFileSource(url, *range_reader(url, storage_options))
    if kind == "run":
        return _RUN_OPENERS[-1](url, "latest", storage_options=storage_options)
    if kind is None:
        raise CheckpointNotFoundError(
            f"{url}: no such file or committed checkpoint (no manifest.json: an unfinished save is invisible); "
            "check the URL", path=url,
        )
    return _REMOTE_CHECKPOINT_OPENERS[-1](url, storage_options)
