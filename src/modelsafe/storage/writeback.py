"""A buffered file that hands its bytes to the disk while it is still being written.

A plain ``write`` of a large file only fills the page cache; the disk starts work at
the final ``fsync``, so copying into memory and writing to disk happen one after
the other.  :class:`WritebackFile` asks the kernel (Linux ``sync_file_range``) to
start writing each completed window as soon as it is filled, and waits for the
window a few steps back, so the two overlap, dirty memory stays bounded, and the
final ``fsync`` finds little left to do.  Elsewhere, or where the call fails, it
is a plain buffered file.  Durability still comes from ``fsync``: this only
changes when the disk starts.

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "x.bin")
>>> with WritebackFile(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)) as f:
...     _ = f.write(b"hello")
>>> open(path, "rb").read()
b'hello'
"""

from __future__ import annotations

import ctypes
import errno
import os
from typing import Any, Callable

from .. import _libc

WRITE_BUFFER = 4 << 20
WINDOW = 64 << 20   # start writeback each time this much more has been written
LAG = 4             # then wait for the window this many steps back: <= LAG * WINDOW dirty

# sync_file_range flags (linux/fs.h)
_WAIT_BEFORE, _WRITE, _WAIT_AFTER = 1, 2, 4


# resolved once, at import: a save never loads a library (audit hooks see nothing)
_SYNC_FILE_RANGE = _libc.function("sync_file_range", [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint])
_FALLOCATE = _libc.function("fallocate", [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64])


def _errno() -> int:
    return _libc.last_errno()


def sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range(fd, offset, nbytes, flags) -> 0 or -1, or None where there is none."""
    return _SYNC_FILE_RANGE


def fallocate() -> Callable[[int, int, int, int], int] | None:
    """libc's fallocate(fd, mode, offset, length) -> 0 or -1 (never emulated by writing zeros), or None."""
    return _FALLOCATE


_IOV_MAX = 1024  # buffers per writev call (POSIX minimum of IOV_MAX)


def writev_all(fd: int, buffers: list) -> int:
    """Write every buffer in order with as few ``writev`` calls as possible; returns the bytes written."""
    views = [b if type(b) is memoryview and b.format == "B" and b.ndim == 1 else memoryview(b).cast("B") for b in buffers]
    total = sum(v.nbytes for v in views)
    i = 0
    while i < len(views):
        chunk = views[i : i + _IOV_MAX]
        n = os.writev(fd, chunk)
        if n == 0 and any(v.nbytes for v in chunk):
            raise OSError(errno.EIO, "writev wrote nothing")
        for view in chunk:  # skip what was written; resume inside a partly written buffer
            if n >= view.nbytes:
                n -= view.nbytes
                i += 1
            else:
                views[i] = view[n:]
                break
    return total


class WritebackFile:
    """A binary file over ``fd`` (taken over, closed with the file) that starts writeback as it goes."""

    def __init__(self, fd: int, *, buffering: int = WRITE_BUFFER) -> None:
        self._file = os.fdopen(fd, "wb", buffering=buffering)
        self._fd = fd
        self._sync = sync_file_range()
        self._written = 0   # bytes passed to write()
        self._started = 0   # bytes handed to writeback so far
        self._waited = 0    # bytes known to be on their way to disk

    def reserve(self, size: int) -> None:
        """Allocate the file's ``size`` bytes before writing them (Linux ``fallocate``).

        Writes into allocated space skip block allocation and size updates page by page.
        Only a hint, except that a disk or quota too small for the file fails here, before
        anything is written.
        """
        function = fallocate()
        if function is None or size <= 0 or function(self._fd, 0, 0, size) == 0:
            return
        code = _errno()
        if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise OSError(code, os.strerror(code))

    def write(self, data: Any) -> int:
        n = self._file.write(data)
        self._written += n
        if self._sync is not None and self._written - self._started >= WINDOW:
            self._start_writeback()
        return n

    def write_many(self, buffers: list) -> int:
        """Write ``buffers`` one after the other straight from their memory (``writev``): no copy."""
        if not hasattr(os, "writev"):  # Windows
            return sum(self.write(b) for b in buffers)
        self._file.flush()
        n = writev_all(self._fd, buffers)
        self._written += n
        if self._sync is not None and self._written - self._started >= WINDOW:
            self._start_writeback()
        return n

    def _start_writeback(self) -> None:
        self._file.flush()
        start, end = self._started, self._written
        if self._sync(self._fd, start, end - start, _WRITE) != 0:
            self._sync = None  # not supported here (file system, kernel): plain buffered file from now on
            return
        self._started = end
        wait_until = end - LAG * WINDOW
        if wait_until > self._waited:
            self._sync(self._fd, self._waited, wait_until - self._waited, _WAIT_BEFORE | _WRITE | _WAIT_AFTER)
            self._waited = wait_until

    def flush(self) -> None:
        self._file.flush()

    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def __getattr__(self, name: str) -> Any:  # tell, seek, writable, ... of the underlying file
        return getattr(self._file, name)

    def __enter__(self) -> "WritebackFile":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
