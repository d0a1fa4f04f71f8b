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
from typing import BinaryIO, Iterator

from ..errors import ModelsafeError, StorageError
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
