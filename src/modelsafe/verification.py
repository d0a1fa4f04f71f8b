"""Verification: check every checksum of a file, a checkpoint directory or a run, naming every problem.

The one verifier of modelsafe.  Loading stops at the first problem; verification
keeps going and yields an event per tensor and bound file — :class:`Checked` or
:class:`Problem` — so a caller can show every damaged file and tensor.  Both use
the same readers: :class:`~.format.reader.FileSource` for single files and
:class:`~.checkpoint_dir.CheckpointSource` (collecting instead of raising) for
checkpoint directories, so the loader and ``modelsafe verify`` agree on what is damaged.

>>> import numpy as np, os, tempfile, modelsafe as ms
>>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
>>> ms.save({"w": np.ones(3)}, path)
>>> [type(event).__name__ for event in check(path)]
['Checked']
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from .checkpoint_dir import MANIFEST, CheckpointSource, open_checkpoint, open_remote_checkpoint, removed_error
from .errors import CheckpointNotFoundError, CheckpointRemovedError, CorruptCheckpointError, ModelsafeError, StorageError
from .format.reader import FileSource
from .sources import directory_opener
from .storage import is_url
from .storage.local import open_regular

__all__ = ["Checked", "Problem", "check", "check_listed", "run_targets"]


@dataclass(frozen=True)
class Checked:
    """A tensor (``tensor`` set) or a bound file (``tensor`` None) whose bytes match.

    ``has_checksum`` is False for a tensor of a plain safetensors file: nothing to compare.
    """

    file: str
    tensor: str | None
    nbytes: int
    has_checksum: bool = True


@dataclass(frozen=True)
class Problem:
    """What is wrong with ``file`` (and ``tensor``, when it is about one): ``error``, a ModelsafeError.

    A :class:`CheckpointRemovedError` means the checkpoint was removed by retention while
    it was being verified: not damage.  ``other_format``: the file is one of another
    format (a torch pickle), which has no modelsafe checksums: not damage either.
    """

    file: str
    tensor: str | None
    error: ModelsafeError
    other_format: bool = False

    @property
    def removed(self) -> bool:
        return isinstance(self.error, CheckpointRemovedError)

    @property
    def corrupt(self) -> bool:
        return not self.removed and not self.other_format


Event = Checked | Problem
_READ_ERRORS = (ModelsafeError, OSError)


def check(path: str | os.PathLike, shared: dict | None = None, *, storage_options: dict | None = None) -> Iterator[Event]:
    """Every tensor and bound file of a single file or a checkpoint directory, checked.

    A directory of another registered layout is checked through its Source.  ``shared``:
    a dict kept across the checkpoints of one verify run, so a shard that several
    checkpoints share through hard links (deduplication) is hashed once, and its damage
    is reported for every checkpoint that holds it.  A URL (``s3://``, with
    ``storage_options``) is checked by byte ranges, one record at a time: nothing is
    downloaded, and memory holds one tensor at most.
    """
    path = os.fspath(path)
    if is_url(path):
        yield from _check_remote(path, storage_options)
        return
    if not os.path.isdir(path):
        yield from _check_file(path)
        return
    opener = directory_opener(path)
    if opener is open_checkpoint:
        yield from _check_checkpoint(path, shared)
    elif opener is not None:
        yield from _check_source(path, opener)
    else:
        yield Problem(path, None, CheckpointNotFoundError(
            f"{path}: is a directory but not a modelsafe checkpoint (no manifest.json)", path=path))


def run_targets(run: str | os.PathLike) -> list[tuple[str, str, ModelsafeError | None]]:
    """(path, name, why it cannot be read or None) of every checkpoint of run ``run``, oldest first.

    One listing, taken once: checkpoints committed later are not included, and one removed
    later is reported by :func:`check_listed` as removed.  Entries the listing skips (a
    damaged manifest, a link, a special file) come last, with the reason.
    """
    from .checkpoints import Checkpoints

    ck = Checkpoints(run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the skipped entries are reported here instead
        infos = ck.list()
    targets: list[tuple[str, str, ModelsafeError | None]] = [(os.fspath(i.path), i.name, None) for i in infos]
    skipped = ck._skipped  # why each skipped entry could not be listed
    targets += [(ck._storage.path(name), name, skipped[name]) for name in sorted(skipped)]
    return targets


def check_listed(path: str, shared: dict | None = None, *, storage_options: dict | None = None) -> Iterator[Event]:
    """:func:`check` of a checkpoint a run listing named: if it vanishes meanwhile, it was removed."""
    for event in check(path, shared, storage_options=storage_options):
        if isinstance(event, Problem) and isinstance(event.error, CheckpointNotFoundError) and not event.removed \
                and (is_url(path) or not os.path.lexists(path)):
            event = Problem(path, None, removed_error(path))
        yield event


# -- single files -----------------------------------------------------------------------

def _check_file(path: str) -> Iterator[Event]:
    try:
        fd = open_regular(path, shown=path, follow_symlinks=True)  # the user's own path may be a link
    except FileNotFoundError:
        yield Problem(path, None, CheckpointNotFoundError(f"{path}: no such file; check the path", path=path))
        return
    except ModelsafeError as exc:
        yield Problem(path, None, exc)
        return
    try:
        source = FileSource(path, fd=fd)
    except _READ_ERRORS as exc:
        other = _other_format(path)
        yield Problem(path, None, other, other_format=True) if other else Problem(path, None, _as_error(exc, path))
        return
    with source:
        yield from _check_records(source, source.map_data(), lambda record: path)


_FORMAT_NAMES = {"torch": "a torch pickle file (torch.save)", "npz": "a NumPy .npz archive",
                 "keras_h5": "a Keras HDF5 file", "mxnet": "an MXNet .params file"}


def _other_format(path: str) -> ModelsafeError | None:
    """An error saying what ``path`` is when ``path`` is a valid-looking file of another format (by its signature)."""
    from .legacy import HEAD_BYTES, reader_for

    try:
        entry = reader_for(path)
        fd = open_regular(path, follow_symlinks=True)
    except (ModelsafeError, OSError):
        return None
    try:
        head = os.pread(fd, HEAD_BYTES, 0)
    finally:
        os.close(fd)
    if entry.name == "safetensors" or entry.sniff is None or not entry.sniff(head, path):
        return None  # only a file whose first bytes say so is named another format; else it is damage
    what = _FORMAT_NAMES.get(entry.name, f"a {entry.name} file")
    return ModelsafeError(
        f"{path}: is {what}, not a modelsafe file: it has no modelsafe checksums to verify. "
        f"ms.load reads it; to get checksums, convert it: modelsafe convert {path} OUT.safetensors",
        path=path,
    )


def _check_records(source: Any, base_of: Any, file_of: Callable[[Any], str]) -> Iterator[Event]:
    """Every record of ``source`` against its checksum (``base_of``: one buffer or a dict per file)."""
    for record in source.records.values():
        base = base_of[record.file] if isinstance(base_of, dict) and record.checksum is not None else base_of
        yield _check_record(source, record, base, file_of(record))


def _check_record(source: Any, record: Any, base: Any, file: str) -> Event:
    """One record of ``source`` against its checksum."""
    if record.checksum is None:
        return Checked(file, record.name, record.nbytes, has_checksum=False)
    try:
        source.verify_record(record, base)
    except _READ_ERRORS as exc:
        return Problem(file, record.name, _as_error(exc, file))
    return Checked(file, record.name, record.nbytes)


# -- checkpoint directories -----------------------------------------------------------------

def _check_checkpoint(path: str, shared: dict | None = None) -> Iterator[Event]:
    problems: list[ModelsafeError] = []
    try:
        source = CheckpointSource(path, problems=problems)
    except _READ_ERRORS as exc:
        yield Problem(_file_of(exc, os.path.join(path, MANIFEST)), None, _as_error(exc, path))
        return
    with source:
        for error in problems:
            yield Problem(_file_of(error, path), error.key, error)
        file_of = lambda record: os.path.join(path, record.file)  # noqa: E731
        if shared is None:
            yield from _check_records(source, source.buffers(lazy=True), file_of)
        else:
            yield from _check_shared(source, file_of, shared)
        for file, nbytes, error in source.bound_file_checks():
            yield Checked(file, None, nbytes) if error is None else Problem(_file_of(error, file), None, error)


def _check_shared(source: CheckpointSource, file_of: Callable[[Any], str], shared: dict) -> Iterator[Event]:
    """:func:`_check_records` of a checkpoint, hashing only tensors of shard files not seen before in ``shared``.

    ``shared`` maps (st_dev, st_ino, tensor) to the first event about it; a later
    checkpoint holding the same file gets that result under its own path.
    """
    buffers = source.buffers(lazy=True)
    for record in source.records.values():
        key = (*source.shard_id(record.file), record.name)
        first = shared.get(key)
        if first is None:
            shared[key] = first = _check_record(source, record, buffers[record.file], file_of(record))
        yield _as_shared(first, file_of(record))


def _as_shared(event: Event, file: str) -> Event:
    """``event`` (about a shard file) for the hard link ``file`` to the same bytes."""
    if event.file == file:
        return event
    if isinstance(event, Checked):
        return Checked(file, event.tensor, event.nbytes, event.has_checksum)
    error = event.error
    if isinstance(error, CorruptCheckpointError):
        error = CorruptCheckpointError(f"{str(error).replace(event.file, file)} (the same bytes as {event.file}, "
                                       "shared through a hard link)", path=file, key=error.key)
    return Problem(file, event.tensor, error, event.other_format)


def _file_of(error: BaseException, default: str) -> str:
    where = getattr(error, "path", None)
    return os.fspath(where) if where else default


# -- other directory layouts ------------------------------------------------------------------

def _check_source(path: str, opener: Callable[..., Any]) -> Iterator[Event]:
    try:
        source = opener(path)
    except _READ_ERRORS as exc:
        yield Problem(path, None, _as_error(exc, path))
        return
    with source:
        try:
            buffers = source.buffers(lazy=True)
        except _READ_ERRORS as exc:
            yield Problem(path, None, _as_error(exc, path))
            return
        yield from _check_records(source, buffers, lambda record: os.path.join(path, record.file) if record.file else path)


def _as_error(exc: BaseException, path: str) -> ModelsafeError:
    """``exc`` as a ModelsafeError (an OS error while reading becomes a StorageError naming ``path``)."""
    if isinstance(exc, ModelsafeError):
        return exc
    if isinstance(exc, OSError):
        return StorageError(f"{path}: cannot read ({exc.strerror or exc})", path=path, errno=exc.errno)
    return CorruptCheckpointError(f"{path}: {exc}", path=path)


# -- objects on a store (byte ranges) ----------------------------------------------------------

def _check_remote(url: str, storage_options: dict | None) -> Iterator[Event]:
    """:func:`check` of a URL: a file or a checkpoint, each record read by its own range and then dropped."""
    from .format.ranges import RangeFileSource
    from .storage.remote import kind_of, range_reader

    problems: list[ModelsafeError] = []
    try:
        kind = kind_of(url, storage_options)
        if kind == "file":
            source: Any = RangeFileSource(url, *range_reader(url, storage_options))
        elif kind == "checkpoint":
            source = open_remote_checkpoint(url, storage_options, problems=problems)
        else:
            raise CheckpointNotFoundError(f"{url}: no such object or committed checkpoint (no manifest.json); "
                                          "check the URL", path=url)
    except _READ_ERRORS as exc:
        yield Problem(_file_of(exc, url), None, _as_error(exc, url))
        return
    with source:
        for error in problems:
            yield Problem(_file_of(error, url), error.key, error)
        shards = isinstance(source, CheckpointSource)  # a sharded checkpoint's errors name the rank file themselves
        file_of = (lambda record: f"{url}/{record.file}") if shards else (lambda record: url)  # noqa: E731
        for record in source.records.values():
            yield _check_fetched(source, record, file_of(record))
        for file, nbytes, error in getattr(source, "bound_file_checks", lambda: ())():
            yield Checked(file, None, nbytes) if error is None else Problem(_file_of(error, file), None, error)


def _check_fetched(source: Any, record: Any, file: str) -> Event:
    """One record of a source read by ranges: its bytes fetched, checked, then released."""
    try:
        base = None
        if record.checksum is not None and hasattr(source, "fetch"):
            source.fetch([record])
            base = source.sparse_buffers()[record.file]
        return _check_record(source, record, base, file)  # a sharded source fetches its chunks itself
    except _READ_ERRORS as exc:
        return Problem(file, record.name, _as_error(exc, file))
    finally:
        source.release()
