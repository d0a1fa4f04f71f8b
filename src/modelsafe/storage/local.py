"""Atomic, durable local writes: temp file in the same directory, fsync, rename, fsync dir.

A save that fails or is killed leaves the previous file untouched.  Its temporary
file (``.NAME.modelsafe-tmp-PID-TOKEN``) is removed on failure, and one left by a
killed process is removed by the next save to the same path.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import os
import secrets
import stat
from typing import BinaryIO, Iterator

from ..errors import CorruptCheckpointError, ModelsafeError, StorageError
from .writeback import WritebackFile

TMP_MARK = ".modelsafe-tmp-"
WRITE_BUFFER = 4 << 20


def temp_path_for(path: str) -> str:
    directory, base = os.path.split(path)
    return os.path.join(directory, f".{base}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_temps(path: str) -> list[str]:
    """Remove temp files of earlier saves to ``path`` whose writing process is gone."""
    directory, base = os.path.split(path)
    prefix = f".{base}{TMP_MARK}"
    removed = []
    try:
        names = os.listdir(directory or ".")
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix):].partition("-")[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(os.path.join(directory, name))
                removed.append(name)
    return removed


def fsync_directory(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def storage_error(path: str, action: str, exc: OSError) -> StorageError:
    hint = {
        errno_mod.ENOSPC: "free disk space and save again",
        errno_mod.EFBIG: "the file size limit was reached; raise it or save elsewhere",
        errno_mod.EDQUOT: "the disk quota is exhausted; free space and save again",
        errno_mod.EACCES: "check the permissions of the directory",
        errno_mod.ENOENT: "the directory does not exist; create it first",
    }.get(exc.errno, "check the path and the file system")
    return StorageError(
        f"{path}: {action} failed: {exc.strerror or exc}; anything saved there before is untouched. {hint}",
        path=path, errno=exc.errno,
    )


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a temp file beside ``path``; on success fsync it and rename it over ``path``.

    >>> import tempfile, os
    >>> target = os.path.join(tempfile.mkdtemp(), "x.bin")
    >>> with atomic_file(target) as f:
    ...     _ = f.write(b"hello")
    >>> open(target, "rb").read()
    b'hello'
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise StorageError(f"{path}: is a directory; give a file name to save to", path=path)
    directory = os.path.dirname(path) or "."
    clean_stale_temps(path)
    tmp = temp_path_for(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as exc:
        raise storage_error(path, "creating a temporary file", exc) from exc
    f = WritebackFile(fd, buffering=WRITE_BUFFER)  # the disk starts while the file is being written
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
        fsync_directory(directory)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            f.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, ModelsafeError):
            raise storage_error(path, "writing", exc) from exc
        raise


# -- reading files a run or checkpoint holds (every one may come from an attacker) ---------

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO opens at once instead of waiting for a writer
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _refused(shown: str, what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{shown}: {what}; a checkpoint holds only regular files and directories, and modelsafe never follows "
        "a link out of it. Remove the entry or restore the checkpoint from a backup",
        path=shown,
    )


def open_regular(name: str, *, dir_fd: int | None = None, shown: str | None = None, follow_symlinks: bool = False) -> int:
    """A read-only descriptor of regular file ``name`` (relative to ``dir_fd`` when given).

    The checks are made on the opened descriptor (``fstat``), not before opening, so a
    file swapped in between cannot slip through: a symbolic link is refused (unless
    ``follow_symlinks``), and a FIFO, socket or device is refused without blocking.
    FileNotFoundError passes through; ``shown`` is the path errors name.
    """
    shown = shown or name
    flags = os.O_RDONLY | _O_NONBLOCK | _O_CLOEXEC | (0 if follow_symlinks else _O_NOFOLLOW)
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno_mod.ELOOP:
            raise _refused(shown, "is a symbolic link") from None
        if exc.errno in (errno_mod.ENXIO, errno_mod.EISDIR):
            raise _refused(shown, "is not a regular file") from None
        raise StorageError(f"{shown}: cannot open ({exc.strerror})", path=shown, errno=exc.errno) from exc
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise _refused(shown, "is not a regular file (a directory, pipe, socket or device)")
    return fd


def open_directory(name: str, *, dir_fd: int | None = None, shown: str | None = None, follow_symlinks: bool = False) -> int:
    """A descriptor of directory ``name``, refusing a symbolic link (unless ``follow_symlinks``).

    Files are then opened relative to it, so a directory renamed or replaced later
    cannot redirect those opens.  FileNotFoundError passes through.
    """
    shown = shown or name
    flags = os.O_RDONLY | _O_DIRECTORY | _O_CLOEXEC | (0 if follow_symlinks else _O_NOFOLLOW)
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno in (errno_mod.ELOOP, errno_mod.ENOTDIR):
            link = not follow_symlinks and os.path.islink(shown)  # only to word the refusal
            raise _refused(shown, "is a symbolic link" if link else "is not a directory") from None
        raise StorageError(f"{shown}: cannot open ({exc.strerror})", path=shown, errno=exc.errno) from exc


def read_limited(fd: int, limit: int, shown: str, what: str) -> bytes:
    """The whole content of regular file ``fd``, refused when over ``limit`` bytes.

    The size comes from ``fstat`` before anything is allocated; a file that grows while
    being read is read up to the size it had.
    """
    size = os.fstat(fd).st_size
    if size > limit:
        raise CorruptCheckpointError(
            f"{shown}: is {size:,} bytes, over the {limit:,}-byte limit for {what} (a real one is far smaller); "
            "the file is damaged or not modelsafe's. Remove it or restore it from a backup",
            path=shown,
        )
    chunks = []
    done = 0
    while done < size:
        chunk = os.pread(fd, size - done, done)
        if not chunk:
            break
        chunks.append(chunk)
        done += len(chunk)
    return b"".join(chunks)


def read_small_file(name: str, limit: int, what: str, *, dir_fd: int | None = None, shown: str | None = None) -> bytes:
    """Read regular file ``name`` of at most ``limit`` bytes (no link, no FIFO: see :func:`open_regular`)."""
    fd = open_regular(name, dir_fd=dir_fd, shown=shown)
    try:
        return read_limited(fd, limit, shown or name, what)
    finally:
        os.close(fd)
