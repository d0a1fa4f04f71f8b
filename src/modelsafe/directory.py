"""Where the files of a checkpoint directory are read from: a local directory, or a prefix on an object store.

:class:`~.checkpoint_dir.CheckpointSource` and :class:`~.distributed.source.DistributedSource`
read every checkpoint through this one small interface (:class:`CheckpointDirectory`),
so the same validation serves both places:

* :class:`LocalDirectory`: every file is opened relative to a descriptor of the
  directory, refusing links and special files on the opened descriptor
  (:func:`~.storage.local.open_regular`); nothing is followed out of the checkpoint,
  nothing blocks, and "removed" means the directory is no longer at its path.
* :class:`RemoteDirectory` (fsspec: ``s3://``, ``memory://``): small files are read with
  one bounded request (at most ``limit + 1`` bytes), shards are opened as
  :class:`~.format.ranges.RangeFileSource` (the header first, then only the byte ranges
  asked for), every size is the object's real size (``fs.size``), and "removed" means
  the manifest (the commit) is gone or changed.  Object stores have no links.

Every name read here comes from a manifest the caller has already checked.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator, Protocol

import xxhash

from .errors import CheckpointNotFoundError, CorruptCheckpointError, ModelsafeError
from .format.ranges import RangeFileSource
from .format.reader import FileSource
from .storage import is_url
from .storage.local import open_directory, open_regular, read_small_file

__all__ = ["CheckpointDirectory", "LocalDirectory", "RemoteDirectory", "open_directory_of", "hash_fd", "HASH_CHUNK"]

HASH_CHUNK = 4 << 20
# Shard headers a remote checkpoint fetches at once when it is opened: one request each, so a
# 300-shard checkpoint would otherwise wait for 600 round trips (a size and a header) in a row
OPEN_PARALLEL = 16

# What opening one shard may fail with and be reported as (anything else propagates)
OpenFailure = (FileNotFoundError, ModelsafeError)
_MARKER = "manifest.json"  # the commit of a checkpoint: its disappearance or change means "removed"


class CheckpointDirectory(Protocol):
    """The reading side of a checkpoint directory; FileNotFoundError passes through every method."""

    path: str

    def inside(self, *parts: str) -> str: ...
    def read_small(self, name: str, limit: int, what: str) -> bytes: ...
    def open_shard(self, name: str) -> FileSource: ...
    def open_shards(self, names: list[str]) -> Iterator[tuple[str, FileSource | Exception]]: ...
    def hash_file(self, parts: list[str]) -> tuple[int, str]: ...
    def tree_problems(self, top: str) -> Iterator[ModelsafeError]: ...
    def removed(self) -> bool: ...
    def close(self) -> None: ...


def open_directory_of(path: Any, storage_options: dict | None = None) -> CheckpointDirectory:
    """The directory ``path`` names: a :class:`CheckpointDirectory` as is, a URL remote, anything else local."""
    if not isinstance(path, (str, os.PathLike)):
        return path
    if is_url(path):
        return RemoteDirectory(os.fspath(path), storage_options)
    return LocalDirectory(path)


def _hash_stream(read: Callable[[int], bytes], limit: int | None = None) -> tuple[int, str]:
    h = xxhash.xxh3_64()
    size = 0
    while True:
        chunk = read(HASH_CHUNK if limit is None else min(HASH_CHUNK, limit - size))
        if not chunk:
            return size, h.hexdigest()
        h.update(chunk)
        size += len(chunk)


def hash_fd(fd: int) -> tuple[int, str]:
    """(size, xxh3) of the open file ``fd``, read in chunks from its start."""
    done = [0]

    def read(count: int) -> bytes:
        data = os.pread(fd, count, done[0])
        done[0] += len(data)
        return data

    return _hash_stream(read)


def _each_opened(open_shard: Callable[[str], FileSource], names: list[str]) -> Iterator[tuple[str, Any]]:
    for name in names:
        try:
            yield name, open_shard(name)
        except OpenFailure as exc:
            yield name, exc


class LocalDirectory:
    """A checkpoint directory on the local file system, held open by a descriptor.

    The path the caller gives may be a link; nothing inside the checkpoint may.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = os.fspath(path)
        try:
            self.dir_fd = open_directory(self.path, shown=self.path, follow_symlinks=True)
        except FileNotFoundError:
            raise CheckpointNotFoundError(f"{self.path}: no such checkpoint directory; check the path",
                                          path=self.path) from None

    def inside(self, *parts: str) -> str:
        return os.path.join(self.path, *parts)

    def read_small(self, name: str, limit: int, what: str) -> bytes:
        return read_small_file(name, limit, what, dir_fd=self.dir_fd, shown=self.inside(name))

    def open_shard(self, name: str) -> FileSource:
        shown = self.inside(name)
        return FileSource(shown, fd=open_regular(name, dir_fd=self.dir_fd, shown=shown))

    def open_shards(self, names: list[str]) -> Iterator[tuple[str, Any]]:
        """(name, shard or the FileNotFoundError / ModelsafeError opening it raised), in order."""
        return _each_opened(self.open_shard, names)

    def hash_file(self, parts: list[str]) -> tuple[int, str]:
        """Hash ``parts`` opening each component relative to the last, never following a link."""
        fds = [self.dir_fd]
        try:
            for depth, part in enumerate(parts[:-1]):
                fds.append(open_directory(part, dir_fd=fds[-1], shown=self.inside(*parts[:depth + 1])))
            fd = open_regular(parts[-1], dir_fd=fds[-1], shown=self.inside(*parts))
            try:
                return hash_fd(fd)
            finally:
                os.close(fd)
        finally:
            for fd in fds[1:]:
                os.close(fd)

    def tree_problems(self, top: str) -> Iterator[ModelsafeError]:
        """Every link or special file under ``top`` (a bound ``load`` would follow it out)."""
        shown_top = self.inside(top)
        try:
            root = open_directory(top, dir_fd=self.dir_fd, shown=shown_top)
        except FileNotFoundError:
            return
        except ModelsafeError as exc:
            yield exc
            return
        pending = [(root, shown_top)]
        while pending:
            fd, where = pending.pop()
            try:
                with os.scandir(fd) as entries:
                    found = [(e.name, e.is_dir(follow_symlinks=False), e.is_file(follow_symlinks=False)) for e in entries]
                for name, is_dir, is_file in found:
                    shown = os.path.join(where, name)
                    if is_dir:
                        try:
                            pending.append((open_directory(name, dir_fd=fd, shown=shown), shown))
                        except (ModelsafeError, FileNotFoundError) as exc:
                            if isinstance(exc, ModelsafeError):
                                yield exc
                    elif not is_file:
                        what = "is a symbolic link" if os.path.islink(shown) else "is not a regular file"
                        yield CorruptCheckpointError(
                            f"{shown}: {what}; a checkpoint holds only regular files and directories, and modelsafe "
                            "never follows a link out of it. Remove the entry or restore the checkpoint from a backup",
                            path=shown,
                        )
            finally:
                os.close(fd)

    def removed(self) -> bool:
        """True when the directory opened is no longer the one at its path (renamed or deleted)."""
        try:
            now = os.stat(self.path)
        except OSError:
            return True
        here = os.fstat(self.dir_fd)
        return (now.st_dev, now.st_ino) != (here.st_dev, here.st_ino)

    def close(self) -> None:
        fd, self.dir_fd = self.dir_fd, -1
        if fd >= 0:
            os.close(fd)


class RemoteDirectory:
    """A checkpoint directory on an object store (every object under prefix ``url``), read through fsspec."""

    def __init__(self, url: str, storage_options: dict | None = None) -> None:
        from .storage.remote import filesystem

        self.path = url.rstrip("/")
        self.fs, key = filesystem(self.path, storage_options)
        self._key = key.rstrip("/")
        self._marker: bytes | None = None  # the manifest as first read: "removed" when it is gone or differs

    def inside(self, *parts: str) -> str:
        return "/".join((self.path, *parts))

    def _object(self, *parts: str) -> str:
        return "/".join((self._key, *parts))

    def _failed(self, exc: OSError, shown: str, action: str = "reading") -> BaseException:
        from .storage.remote import remote_error

        return exc if isinstance(exc, (FileNotFoundError, ModelsafeError)) else remote_error(shown, action, exc)

    def read_small(self, name: str, limit: int, what: str) -> bytes:
        """Object ``name`` in one request of at most ``limit + 1`` bytes; a longer one is refused."""
        shown = self.inside(name)
        try:
            data = self.fs.cat_file(self._object(name), start=0, end=limit + 1)
        except OSError as exc:
            raise self._failed(exc, shown) from None
        if len(data) > limit:
            raise CorruptCheckpointError(
                f"{shown}: is over the {limit:,}-byte limit for {what} (a real one is far smaller); the object is "
                "damaged or not modelsafe's. Remove it or restore it from a backup", path=shown,
            )
        if name == _MARKER and self._marker is None:
            self._marker = data
        return data

    def _size(self, name: str, shown: str) -> int:
        key = self._object(name)
        self.fs.invalidate_cache(key)  # a size cached from an earlier listing may be stale
        try:
            return int(self.fs.size(key))
        except OSError as exc:
            raise self._failed(exc, shown) from None

    def open_shard(self, name: str) -> FileSource:
        """Shard ``name`` read by byte ranges: its header now, tensors when asked for."""
        shown = self.inside(name)
        return RangeFileSource(shown, *self._ranges(name, shown))

    def open_shards(self, names: list[str]) -> Iterator[tuple[str, Any]]:
        """(name, shard or the FileNotFoundError / ModelsafeError opening it raised), in order;
        up to OPEN_PARALLEL headers are fetched at once (each open is a few round trips)."""
        if len(names) < 2:
            return _each_opened(self.open_shard, names)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(min(OPEN_PARALLEL, len(names)), thread_name_prefix="modelsafe-open") as pool:
            opened = list(pool.map(lambda name: next(_each_opened(self.open_shard, [name])), names))
        return iter(opened)

    def _ranges(self, name: str, shown: str) -> tuple[int, Callable[[int, int], bytes]]:
        from .storage.remote import remote_error

        size = self._size(name, shown)
        key = self._object(name)

        def read(offset: int, count: int) -> bytes:
            end = min(offset + count, size)
            try:
                data = self.fs.cat_file(key, start=offset, end=end)
            except OSError as exc:  # a StorageError (gone since it was opened: the caller asks removed())
                raise remote_error(shown, "reading", exc) from None
            if len(data) != max(end - offset, 0):  # replaced or truncated since it was opened
                raise CorruptCheckpointError(
                    f"{shown}: bytes [{offset}, {end}) came back as {len(data)} bytes: the object changed or was "
                    "truncated while it was read; the checkpoint is damaged. Load an earlier checkpoint", path=shown,
                )
            return data

        return size, read

    def hash_file(self, parts: list[str]) -> tuple[int, str]:
        """(size, xxh3) of object ``parts``, read in ranges up to its size."""
        shown = self.inside(*parts)
        size, read = self._ranges("/".join(parts), shown)
        done = [0]

        def chunk(count: int) -> bytes:
            data = read(done[0], count) if done[0] < size and count > 0 else b""
            done[0] += len(data)
            return data

        return _hash_stream(chunk, size)

    def tree_problems(self, top: str) -> Iterator[ModelsafeError]:
        return iter(())  # an object store has no links or special files

    def removed(self) -> bool:
        """True when the manifest (the commit) is gone or no longer the one first read."""
        try:
            now = self.fs.cat_file(self._object(_MARKER), start=0, end=len(self._marker or b"") + 1)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # cannot tell: the caller reports the error it had
        return self._marker is not None and now != self._marker

    def download(self, parts: list[str], target: str) -> None:
        """Copy object ``parts`` (a bound file a manifest names) to new local file ``target``, in ranges."""
        shown = self.inside(*parts)
        size, read = self._ranges("/".join(parts), shown)
        with open(target, "xb") as out:
            for start in range(0, size, HASH_CHUNK):
                out.write(read(start, HASH_CHUNK))

    def close(self) -> None:
        pass
