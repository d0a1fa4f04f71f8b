"""Private (copy-on-write) file mappings that hold no file descriptor.

``mmap.mmap`` keeps a duplicate of the file's descriptor for as long as the mapping
lives (before Python 3.13), so every state returned by ``ms.load`` would hold an open
file until its last tensor is freed, and a process keeping more loaded states than
its descriptor limit (often 1024, 256 on macOS) could open no more files.  This maps
with libc's ``mmap`` through ctypes instead: the mapping is released (``munmap``)
when the last array or tensor viewing it is gone, and no descriptor is kept.

>>> import os, tempfile
>>> path = os.path.join(tempfile.mkdtemp(), "f")
>>> _ = open(path, "wb").write(b"modelsafe")
>>> fd = os.open(path, os.O_RDONLY)
>>> buf = map_private(fd, 9)
>>> os.close(fd)
>>> bytes(buf) if buf is not None else b"modelsafe"
b'modelsafe'
"""

from __future__ import annotations

import ctypes
import mmap
import os
import weakref
from typing import Any

from .. import _libc

_MAP_FAILED = ctypes.c_void_p(-1).value


def _load_libc() -> tuple[Any, Any, Any] | None:
    map_ = _libc.function("mmap", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long],
                          ctypes.c_void_p)
    unmap = _libc.function("munmap", [ctypes.c_void_p, ctypes.c_size_t])
    advise = _libc.function("madvise", [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int])
    return (map_, unmap, advise) if map_ and unmap and advise else None


# resolved once, at import: loading a file never loads a library (audit hooks see nothing)
_LIBC = _load_libc()


def map_private(fd: int, size: int, *, will_need: bool = False) -> Any:
    """The first ``size`` bytes of open file ``fd`` as a writable copy-on-write buffer.

    Writes to the buffer never reach the file.  ``will_need`` asks the kernel to read the
    whole range ahead.  Returns None where the platform offers no such call (the caller
    then uses ``mmap.mmap``); raises OSError if mapping fails.
    """
    functions = _LIBC
    if functions is None or size <= 0:
        return None
    map_, unmap, advise = functions
    address = map_(None, size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd, 0)
    if address is None or address == _MAP_FAILED:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    buffer = (ctypes.c_ubyte * size).from_address(address)
    # unmapped when the last view of the buffer goes; never at interpreter exit, where
    # objects still viewing it may be torn down after the finalizers ran (the OS unmaps then)
    weakref.finalize(buffer, unmap, address, size).atexit = False
    if will_need and hasattr(mmap, "MADV_WILLNEED"):
        advise(address, size, mmap.MADV_WILLNEED)
    return buffer
