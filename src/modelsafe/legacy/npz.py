"""numpy ``.npz`` archives, read with ``allow_pickle=False`` (object arrays are refused).

Each member's ``.npy`` header is checked against the member's size, and every member's
bytes are charged against the archive's real size on disk (a :class:`Budget`), before numpy
allocates or inflates anything: a tiny archive cannot declare gigabytes, nor deflate into them.

>>> import numpy as np, tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "a.npz")
>>> np.savez(p, b=np.zeros(2))
>>> read(p, None).tree
{'b': array([0., 0.])}
"""

from __future__ import annotations

import math
import os
import struct
import zipfile
import zlib
from typing import Any

import numpy as np

from ..errors import CorruptCheckpointError, ModelsafeError, UnsafeObjectError
from . import Budget, ForeignFile, ReadOptions, arrays_as, checked_shape, regular_file_size


def _declared_nbytes(z: zipfile.ZipFile, info: zipfile.ZipInfo, source: str) -> int:
    with z.open(info) as member:
        try:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                shape, _fortran, dtype = np.lib.format._read_array_header(member, version)  # noqa: SLF001
        except ValueError as exc:
            raise CorruptCheckpointError(f"{source}: member {info.filename} has a bad .npy header ({exc})", path=source, key=info.filename) from None
        if dtype.hasobject:
            raise UnsafeObjectError(
                f"{source}: member {info.filename} holds a pickled object array ({dtype}); unpickling can run code, "
                "so it is refused (numpy's allow_pickle=False)", path=source, key=info.filename,
            )
        header_end = member.tell()
    shape = checked_shape(shape, dtype.itemsize, source, f"member {info.filename}")
    nbytes = math.prod(shape) * dtype.itemsize
    if header_end + nbytes > info.file_size:
        raise CorruptCheckpointError(
            f"{source}: member {info.filename} declares {nbytes:,} bytes of array data but holds "
            f"{info.file_size - header_end:,}; refused before allocating", path=source, key=info.filename,
        )
    return nbytes


def read(path: str | os.PathLike, options: ReadOptions | None) -> ForeignFile:
    path = os.fspath(path)
    options = options or ReadOptions()
    budget = Budget(path, regular_file_size(path), options.max_expansion)
    notes: list[str] = []
    tree: dict[str, Any] = {}
    try:
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                budget.charge(_declared_nbytes(z, info, path), f"member {info.filename}")
            for info in z.infolist():  # read here, not by np.load, which would take a .npy-looking file whole
                name = info.filename[: -len(".npy")] if info.filename.endswith(".npy") else info.filename
                with z.open(info) as member:
                    arr = np.lib.format.read_array(member, allow_pickle=False)
                if arr.dtype.kind not in "biufc":
                    notes.append(f"{name}: {arr.dtype} array is not a tensor (numpy writes bfloat16/float8 arrays "
                                 "as raw void records, losing their type); left out")
                    continue
                tree[name] = arr
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, NotImplementedError, RuntimeError,
            struct.error) as exc:  # what zipfile and zlib raise on damaged archives
        raise CorruptCheckpointError(f"{path}: is not a valid .npz archive ({type(exc).__name__}: {exc})", path=path) from None
    except ModelsafeError:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UnsafeObjectError(f"{path}: holds pickled object arrays; refused", path=path) from None
        raise CorruptCheckpointError(f"{path}: a member could not be read ({exc})", path=path) from None
    return ForeignFile(path, "npz", arrays_as(tree, options.framework), notes)
