"""MXNet ``.params`` / NDArray-list files, read without MXNet.

The layout (MXNet's ``NDArray::Save`` and ``mx.nd.save``), all little-endian:

* ``uint64`` list magic ``0x112``, ``uint64`` reserved (0);
* ``uint64`` array count, then each array:
  ``uint32`` array magic — ``0xF993FACA`` (V3, numpy shape semantics), ``0xF993FAC9``
  (V2) or ``0xF993FAC8`` (V1); anything else is the ``ndim`` of the oldest layout;
  V2/V3: ``int32`` storage type (0 dense; sparse is refused);
  the shape: ``int32 ndim`` then ``int64`` dims (oldest layout: ``uint32`` dims);
  an empty array (V1/V2 ``ndim == 0``, V3 ``ndim == -1``) ends here;
  the context: ``int32`` device type, ``int32`` device id;
  ``int32`` dtype code; the raw data (``prod(shape) * itemsize`` bytes);
* ``uint64`` name count, then each name as ``uint64`` length + bytes.  Names are
  ``arg:``/``aux:``-prefixed in Module checkpoints, plain in Gluon's save_parameters.

Every count, length and size is checked against the bytes left in the file before
anything is allocated, and every shape against what numpy and torch can hold (a
shape like ``(0, 2**62)`` holds no data, yet no array has it).  Data is copied from the
file byte for byte, so the output never holds more than the file.

>>> import numpy as np, tempfile, os, struct
>>> p = os.path.join(tempfile.mkdtemp(), "m.params")
>>> arr = np.arange(3, dtype=np.float32)
>>> blob = struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<Iii", 0xF993FAC9, 0, 1) + struct.pack("<q", 3)
>>> blob += struct.pack("<iii", 1, 0, 0) + arr.tobytes() + struct.pack("<QQ", 1, 1) + b"w"
>>> _ = open(p, "wb").write(blob)
>>> read(p, None).tree
{'w': array([0., 1., 2.], dtype=float32)}
"""

from __future__ import annotations

import math
import os
import struct
from typing import Any

import numpy as np

from ..errors import CorruptCheckpointError, UnsupportedObjectError
from ..format import dtypes
from . import ForeignFile, ReadOptions, arrays_as, checked_shape

LIST_MAGIC = 0x112
V1_MAGIC = 0xF993FAC8
V2_MAGIC = 0xF993FAC9
V3_MAGIC = 0xF993FACA
MAX_DIMS = 32
# mshadow type flags -> logical dtype names
DTYPE_CODES = {
    0: "float32", 1: "float64", 2: "float16", 3: "uint8", 4: "int32", 5: "int8", 6: "int64", 7: "bool",
    8: "int16", 9: "uint16", 10: "uint32", 11: "uint64", 12: "bfloat16",
}


class _Cursor:
    """Reads little-endian fields from a byte buffer, refusing to run past its end."""

    def __init__(self, blob: memoryview, source: str) -> None:
        self.blob = blob
        self.pos = 0
        self.source = source

    def left(self) -> int:
        return len(self.blob) - self.pos

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or n > self.left():
            raise CorruptCheckpointError(
                f"{self.source}: {what} needs {n:,} bytes at offset {self.pos} but only {self.left():,} remain; "
                "the file is truncated or damaged (refused before allocating)", path=self.source,
            )
        out = self.blob[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def _shape(cur: _Cursor, ndim: int, wide: bool, index: int) -> tuple[int, ...]:
    if not 0 <= ndim <= MAX_DIMS:
        raise CorruptCheckpointError(f"{cur.source}: array {index} has {ndim} dimensions", path=cur.source,
                                     key=f"array {index}")
    return cur.unpack(("q" if wide else "I") * ndim, f"the shape of array {index}")


def _array(cur: _Cursor, index: int) -> np.ndarray | None:
    (magic,) = cur.unpack("I", f"the header of array {index}")
    if magic in (V2_MAGIC, V3_MAGIC):
        (stype,) = cur.unpack("i", f"the storage type of array {index}")
        if stype != 0:
            raise UnsupportedObjectError(
                f"{cur.source}: array {index} is sparse (storage type {stype}); save it dense (tostype('default'))",
                path=cur.source,
            )
        (ndim,) = cur.unpack("i", f"the shape of array {index}")
        if ndim == -1 or (ndim == 0 and magic == V2_MAGIC):
            return None
        shape = _shape(cur, ndim, True, index)
    elif magic == V1_MAGIC:
        (ndim,) = cur.unpack("i", f"the shape of array {index}")
        if ndim == 0:
            return None
        shape = _shape(cur, ndim, True, index)
    else:  # the oldest layout: the magic is ndim, dims are uint32
        if magic == 0:
            return None
        shape = _shape(cur, magic, False, index)
    _dev_type, _dev_id, code = cur.unpack("iii", f"the context and dtype of array {index}")
    name = DTYPE_CODES.get(code)
    if name is None:
        raise CorruptCheckpointError(f"{cur.source}: array {index} has unknown dtype code {code}", path=cur.source,
                                     key=f"array {index}")
    dt = dtypes.BY_NAME[name]
    shape = checked_shape(shape, dt.itemsize, cur.source, f"array {index}")  # (0, 2**62) holds no data yet breaks numpy
    data = cur.take(math.prod(shape) * dt.itemsize, f"the data of array {index} ({name} x {list(shape)})")
    return np.frombuffer(data, dtype=dtypes.numpy_dtype(dt)).reshape(shape).copy()


def read(path: str | os.PathLike, options: ReadOptions | None) -> ForeignFile:
    path = os.fspath(path)
    with open(path, "rb") as f:
        blob = f.read()
    cur = _Cursor(memoryview(blob), path)
    magic, _reserved = cur.unpack("QQ", "the file header")
    if magic != LIST_MAGIC:
        raise CorruptCheckpointError(f"{path}: not an MXNet NDArray file (magic {magic:#x}, expected {LIST_MAGIC:#x})", path=path)
    (count,) = cur.unpack("Q", "the array count")
    if count > cur.left() // 4:
        raise CorruptCheckpointError(f"{path}: declares {count:,} arrays, more than the file could hold", path=path)
    arrays = [_array(cur, i) for i in range(count)]
    (name_count,) = cur.unpack("Q", "the name count")
    if name_count not in (0, count):
        raise CorruptCheckpointError(f"{path}: {name_count} names for {count} arrays", path=path)
    names = []
    for i in range(name_count):
        (length,) = cur.unpack("Q", f"the length of name {i}")
        try:
            names.append(bytes(cur.take(length, f"name {i}")).decode("utf-8"))
        except UnicodeDecodeError:
            raise CorruptCheckpointError(f"{path}: name {i} is not UTF-8", path=path) from None
    if cur.left():
        raise CorruptCheckpointError(f"{path}: {cur.left()} unexpected bytes after the last name", path=path)
    if len(set(names)) != len(names):
        raise CorruptCheckpointError(f"{path}: array names repeat", path=path)
    notes = []
    if any(a is None for a in arrays):
        notes.append("empty (shape-less) arrays are stored as None")
    tree: Any = dict(zip(names, arrays)) if names else arrays
    return ForeignFile(path, "mxnet", arrays_as(tree, options.framework if options else None), notes)
