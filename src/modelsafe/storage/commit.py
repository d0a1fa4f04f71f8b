"""Committing checkpoint directories of a run: stage, fsync, publish atomically, one writer.

A run is a directory of checkpoint directories.  :class:`RunStorage` is the small
interface the checkpoint manager talks to; :class:`LocalRunStorage` implements it
for local file systems:

* ``stage(name)`` makes a hidden staging directory ``.NAME.modelsafe-tmp-PID-TOKEN``;
* ``commit(staging, name)`` fsyncs every file and directory in it, renames it to
  ``NAME`` (one atomic step) and fsyncs the run directory;
* ``delete(name)`` renames ``NAME`` to ``.NAME.modelsafe-del-TOKEN`` (it vanishes in one
  atomic step) before removing the files;
* ``lock()`` takes an exclusive ``flock`` on ``.modelsafe.lock``: a second writer gets a
  :class:`RunLockedError` naming the holder; the kernel drops the lock when a writer dies;
* ``clean_leftovers()`` (called with the lock held) removes staging and deleting
  directories of dead writers and restores a checkpoint a crash left half-replaced.

An object-store backend implements the same methods with the manifest written last as
the commit (see docs/checkpoints.md).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno as errno_mod
import os
import secrets
import shutil
import sys
from typing import Callable, Protocol

from .. import _libc
from ..errors import ModelsafeError, RunLockedError
from .local import atomic_file, fsync_directory, open_directory, read_small_file, storage_error

try:  # POSIX advisory locks; released by the kernel when the holder exits or is killed
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["RunStorage", "LocalRunStorage", "RunLockedError", "STAGING_MARK", "DELETING_MARK", "REPLACED_MARK", "LOCK_NAME"]

STAGING_MARK = ".modelsafe-tmp-"
DELETING_MARK = ".modelsafe-del-"
REPLACED_MARK = ".modelsafe-old-"
LOCK_NAME = ".modelsafe.lock"
MANIFEST = "manifest.json"
RUN_FILE = ".modelsafe-run.json"
# Limits no real file reaches (a run file is a few hundred bytes; a manifest takes about
# 150 bytes per tensor, so 128 MiB is ~800,000 tensors) and a hostile one hits at once.
MAX_RUN_FILE = 1 << 20
MAX_MANIFEST_BYTES = 128 << 20


class RunStorage(Protocol):
    """What the checkpoint manager needs from a storage backend."""

    location: str

    def path(self, name: str) -> str: ...
    def checkpoint_path(self, name: str) -> str: ...
    def entries(self) -> list[str]: ...
    def exists(self, name: str) -> bool: ...
    def read_manifest(self, name: str) -> bytes | None: ...
    def manifest_signature(self, name: str) -> tuple | None: ...
    def read_run_file(self) -> bytes | None: ...
    def write_run_file(self, data: bytes) -> None: ...
    def lock(self) -> None: ...
    def unlock(self) -> None: ...
    def clean_leftovers(self) -> list[str]: ...
    def stage(self, name: str) -> str: ...
    def discard(self, staging: str) -> None: ...
    def commit(self, staging: str, name: str, durable: frozenset[str] = frozenset()) -> str: ...
    def delete(self, name: str) -> None: ...


def fsync_tree(root: str, durable: frozenset[str] = frozenset()) -> None:
    """fsync every regular file and directory under ``root`` (deepest directories first).

    ``durable``: paths of files that are hard links to files of committed checkpoints,
    durable since their own commit: only their new directory entries need the fsync of
    their directory (a linked 1 GiB base made 16 extra fsyncs, 40% of a save's fsync time).
    """
    for directory, dirs, files in os.walk(root, topdown=False):
        for name in files:
            path = os.path.join(directory, name)
            if os.path.islink(path) or path in durable:
                continue
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_directory(directory)


def _token() -> str:
    return f"{os.getpid()}-{secrets.token_hex(4)}"


def _hidden(name: str, mark: str) -> str:
    return f".{name}{mark}{_token()}"


def _split_hidden(entry: str, mark: str) -> str | None:
    """The checkpoint name inside a hidden ``.NAME<mark>PID-TOKEN`` entry, or None."""
    if not entry.startswith(".") or mark not in entry:
        return None
    return entry[1:].rpartition(mark)[0] or None


class LocalRunStorage:
    """A run directory on a local (POSIX) file system."""

    def __init__(self, location: str | os.PathLike) -> None:
        self.location = os.path.abspath(os.fspath(location))
        self._lock_fd: int | None = None

    def path(self, name: str) -> str:
        return os.path.join(self.location, name)

    def checkpoint_path(self, name: str) -> str:
        """Where committed checkpoint ``name`` is: its directory, or (after a crash in the
        middle of a non-atomic replace) the old copy set aside until the next writer restores it."""
        final = self.path(name)
        if os.path.lexists(final):
            return final
        return self._asides().get(name, final)

    def _asides(self) -> dict[str, str]:
        try:
            names = os.listdir(self.location)
        except OSError:
            return {}
        out = {}
        for entry in sorted(names):
            original = _split_hidden(entry, REPLACED_MARK)
            if original is not None:
                out.setdefault(original, os.path.join(self.location, entry))
        return out

    # -- reading -------------------------------------------------------------------
    def entries(self) -> list[str]:
        """Names of visible entries that may be checkpoints: subdirectories, and links (which
        are never followed: reading one reports it).  Hidden entries are ours or not checkpoints."""
        try:
            with os.scandir(self.location) as it:
                found = [(e.name, e.is_symlink() or e.is_dir(follow_symlinks=False)) for e in it]
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise storage_error(self.location, "listing the run directory", exc) from exc
        visible = [name for name, maybe in found if maybe and not name.startswith(".")]
        if any(REPLACED_MARK in name for name, _ in found):
            visible += [n for n in self._asides() if n not in visible]
        return visible

    def exists(self, name: str) -> bool:
        """True while entry ``name`` (or the copy a crash set aside) is in the run directory."""
        return os.path.lexists(self.checkpoint_path(name))

    def read_manifest(self, name: str) -> bytes | None:
        """The committed manifest of checkpoint ``name``, or None when it has none.

        A checkpoint or manifest that is a link, a manifest that is not a regular file or
        is over MAX_MANIFEST_BYTES raise CorruptCheckpointError naming it.
        """
        where = self.checkpoint_path(name)
        try:
            dir_fd = open_directory(where, shown=where)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return read_small_file(MANIFEST, MAX_MANIFEST_BYTES, "a checkpoint manifest", dir_fd=dir_fd,
                                   shown=os.path.join(where, MANIFEST))
        except FileNotFoundError:
            return None
        finally:
            os.close(dir_fd)

    def manifest_signature(self, name: str) -> tuple | None:
        """Changes whenever checkpoint ``name``'s manifest does (cache key); None when it has none."""
        path = os.path.join(self.checkpoint_path(name), MANIFEST)
        try:
            st = os.stat(path, follow_symlinks=False)
        except OSError:
            return None
        return (path, st.st_ino, st.st_mtime_ns, st.st_size)

    def read_run_file(self) -> bytes | None:
        """The run file's bytes (at most MAX_RUN_FILE; a link or special file is refused), or None."""
        try:
            return read_small_file(os.path.join(self.location, RUN_FILE), MAX_RUN_FILE, "a run file")
        except (FileNotFoundError, NotADirectoryError):
            return None

    def write_run_file(self, data: bytes) -> None:
        """Replace the run file atomically (writer only)."""
        self._require_lock("writing the run file")
        with atomic_file(os.path.join(self.location, RUN_FILE)) as f:
            f.write(data)

    # -- the single writer -----------------------------------------------------------
    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def lock(self) -> None:
        """Become the run's only writer, or raise RunLockedError naming the holder."""
        if self._lock_fd is not None:
            return
        try:
            os.makedirs(self.location, exist_ok=True)
            fd = os.open(os.path.join(self.location, LOCK_NAME), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise storage_error(self.location, "creating the run directory and its lock file", exc) from exc
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
                os.close(fd)
                if exc.errno in (errno_mod.EWOULDBLOCK, errno_mod.EAGAIN, errno_mod.EACCES):
                    raise RunLockedError(
                        f"{self.location}: another writer holds this run (lock {LOCK_NAME}, holder: {holder}); "
                        "two writers would interleave checkpoints. Stop the other process, call close() on the "
                        "other Checkpoints object, or save to a different directory",
                        path=self.location, errno=exc.errno,
                    ) from None
                raise storage_error(self.location, "locking the run", exc) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename if hasattr(os, 'uname') else '?'}\n".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock

    def _require_lock(self, action: str) -> None:
        if self._lock_fd is None:
            raise ModelsafeError(f"{self.location}: internal error: {action} without holding the run lock")

    def clean_leftovers(self) -> list[str]:
        """Remove what crashed writers left (the lock guarantees they are gone)."""
        self._require_lock("cleaning leftovers")
        try:
            names = os.listdir(self.location)
        except FileNotFoundError:
            return []
        removed = []
        for entry in sorted(names):
            full = os.path.join(self.location, entry)
            replaced = _split_hidden(entry, REPLACED_MARK)
            if replaced is not None and not os.path.exists(self.path(replaced)):
                # a crash between "old aside" and "new in place": put the old one back
                os.rename(full, self.path(replaced))
                removed.append(entry)
                continue
            if any(_split_hidden(entry, mark) is not None for mark in (STAGING_MARK, DELETING_MARK, REPLACED_MARK)):
                _remove(full)
                removed.append(entry)
        if removed:
            fsync_directory(self.location)
        return removed

    # -- writing ---------------------------------------------------------------------
    def stage(self, name: str) -> str:
        """A fresh hidden directory to write checkpoint ``name`` into."""
        self._require_lock("staging a checkpoint")
        staging = os.path.join(self.location, _hidden(name, STAGING_MARK))
        try:
            os.mkdir(staging, 0o755)
        except OSError as exc:
            raise storage_error(staging, "creating a staging directory", exc) from exc
        return staging

    def discard(self, staging: str) -> None:
        with contextlib.suppress(OSError):
            _remove(staging)

    def commit(self, staging: str, name: str, durable: frozenset[str] = frozenset()) -> str:
        """Make ``staging`` durable and visible as ``name`` in one atomic rename.

        ``durable``: files in ``staging`` hard-linked from committed checkpoints (see :func:`fsync_tree`).
        """
        self._require_lock("committing a checkpoint")
        final = self.path(name)
        try:
            fsync_tree(staging, durable)
            if os.path.lexists(final):
                # swap atomically where the kernel can; else old aside, new in place (readers
                # and the next writer treat an aside whose name is missing as committed)
                if not _exchange(staging, final):
                    aside = os.path.join(self.location, _hidden(name, REPLACED_MARK))
                    os.rename(final, aside)
                    os.rename(staging, final)
                    staging = aside
                fsync_directory(self.location)
                _remove(staging)
            else:
                os.rename(staging, final)
            fsync_directory(self.location)
        except OSError as exc:
            raise storage_error(final, "committing the checkpoint", exc) from exc
        return final

    def delete(self, name: str) -> None:
        """Remove checkpoint ``name``: it disappears atomically, then its files go."""
        self._require_lock("deleting a checkpoint")
        doomed = os.path.join(self.location, _hidden(name, DELETING_MARK))
        try:
            os.rename(self.path(name), doomed)
            fsync_directory(self.location)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise storage_error(self.path(name), "deleting the checkpoint", exc) from exc
        with contextlib.suppress(OSError):
            _remove(doomed)


_RENAME_EXCHANGE = 2


def _load_renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):  # RENAME_EXCHANGE is Linux's
        return None
    return _libc.function("renameat2", [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint])


# resolved once, at import: a commit never loads a library (audit hooks see nothing)
_RENAMEAT2 = _load_renameat2()


def _exchange(a: str, b: str) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    if _RENAMEAT2 is None:
        return False
    at_fdcwd = -100
    if _RENAMEAT2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = _libc.last_errno()
    if err in (errno_mod.EINVAL, errno_mod.ENOSYS, errno_mod.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), b)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=False)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
