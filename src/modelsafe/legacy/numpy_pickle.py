"""Allowlist stand-ins for numpy arrays, scalars and dtypes inside pickles (torch checkpoints often hold them).

numpy pickles an array as ``_reconstruct(ndarray, (0,), b'b')`` followed by BUILD with
``(version, shape, dtype, is_fortran, raw_bytes)``, a protocol-5 array as
``_frombuffer(bytes, dtype, shape, order)``, a scalar as ``scalar(dtype, raw_bytes)``,
and a dtype as ``dtype('f8', False, True)`` followed by BUILD with its byte order.
The stand-ins here accept exactly those shapes of arguments for plain numeric dtypes
(bool, integers, floats, complex); object, string, structured and subarray dtypes are
refused, and every byte count is checked against dtype x shape.  They build inert
records; :func:`to_numpy` makes the arrays once unpickling has finished.
"""

from __future__ import annotations

import math
import re
from typing import Any

import numpy as np

from . import MAX_TENSOR_BYTES
from .restricted_pickle import Refused

__all__ = ["NUMPY_GLOBALS", "NumpyDType", "NumpyArray", "NumpyScalar", "to_numpy"]

_DESCR = re.compile(r"(b1|[iu][1248]|f[248]|c(8|16))\Z")


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise Refused(what)


class NumpyDType:
    """numpy.dtype(descr, align, copy); BUILD sets the byte order."""

    __slots__ = ("descr", "byteorder")

    def __init__(self, descr: Any, align: Any = False, copy: Any = True) -> None:
        if isinstance(descr, str) and descr.startswith("O"):
            raise Refused("holds a numpy object array (dtype 'O'), whose elements are arbitrary pickled objects; "
                          "refused", unsafe=True)
        _require(isinstance(descr, str) and _DESCR.match(descr) is not None,
                 f"numpy dtype {descr!r:.40} is not a plain numeric dtype (string and record dtypes are refused)")
        self.descr = descr
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        _require(isinstance(state, tuple) and len(state) >= 3, "malformed numpy dtype state")
        byteorder = state[1]
        _require(byteorder in ("<", ">", "|", "="), f"numpy dtype byte order {byteorder!r:.10}")
        _require(all(v is None for v in state[2:5]), "numpy subarray/record dtypes are refused")
        self.byteorder = byteorder

    def numpy(self) -> np.dtype:
        dt = np.dtype(self.descr)
        return dt.newbyteorder(self.byteorder) if self.byteorder in "<>" else dt


class NdarrayClass:
    """numpy.ndarray, as the first argument of _reconstruct."""

    __slots__ = ()


NDARRAY = NdarrayClass()


def _shape(value: Any) -> tuple:
    _require(isinstance(value, tuple) and len(value) <= 64 and all(type(d) is int and d >= 0 for d in value),
             f"numpy array shape {value!r:.60} is not a tuple of non-negative integers")
    # (0, 2**62) holds no bytes, yet numpy cannot make it: bound the dims before any arithmetic
    _require(math.prod(min(max(d, 1), MAX_TENSOR_BYTES + 1) for d in value) <= MAX_TENSOR_BYTES,
             f"numpy array shape {value!r:.60} is larger than any array can be")
    return value


def _nbytes(dtype: NumpyDType, shape: tuple) -> int:
    count = 1
    for d in shape:
        count *= d
    return count * np.dtype(dtype.descr).itemsize


class NumpyArray:
    """An ndarray described by the pickle; its bytes are checked against dtype x shape."""

    __slots__ = ("shape", "dtype", "fortran", "raw")

    def __init__(self) -> None:
        self.shape = self.dtype = self.raw = None
        self.fortran = False

    def __setstate__(self, state: Any) -> None:
        _require(isinstance(state, tuple) and len(state) in (4, 5), "malformed numpy array state")
        if len(state) == 5:
            state = state[1:]
        shape, dtype, fortran, raw = state
        self.fill(raw, dtype, _shape(shape), fortran)

    def fill(self, raw: Any, dtype: Any, shape: tuple, fortran: Any) -> None:
        _require(self.raw is None, "a numpy array is built twice")
        _require(isinstance(dtype, NumpyDType), "numpy array dtype must be a numpy dtype")
        _require(type(fortran) is bool, "numpy array order flag must be a bool")
        _require(isinstance(raw, (bytes, bytearray)), "numpy array data must be bytes (object arrays are refused)")
        _require(len(raw) == _nbytes(dtype, shape),
                 f"numpy array of {dtype.descr} x {list(shape)} needs {_nbytes(dtype, shape)} bytes, the pickle holds {len(raw)}")
        self.shape, self.dtype, self.fortran, self.raw = shape, dtype, fortran, bytes(raw)


class NumpyScalar:
    __slots__ = ("dtype", "raw")

    def __init__(self, dtype: Any, raw: Any) -> None:
        _require(isinstance(dtype, NumpyDType), "numpy scalar dtype must be a numpy dtype")
        _require(isinstance(raw, (bytes, bytearray)) and len(raw) == np.dtype(dtype.descr).itemsize,
                 "numpy scalar data must be exactly one element of bytes")
        self.dtype, self.raw = dtype, bytes(raw)


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> NumpyArray:
    _require(cls is NDARRAY, "_reconstruct may only build numpy.ndarray")
    return NumpyArray()


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> NumpyArray:
    _require(order in ("C", "F"), "numpy array order must be 'C' or 'F'")
    arr = NumpyArray()
    arr.fill(buf, dtype, _shape(shape), order == "F")
    return arr


def to_numpy(obj: Any) -> Any:
    """The numpy array or scalar a stand-in describes."""
    if isinstance(obj, NumpyScalar):
        return np.frombuffer(obj.raw, obj.dtype.numpy())[0]
    if isinstance(obj, NumpyArray):
        if obj.raw is None:
            raise Refused("a numpy array was never given its data")
        dt = obj.dtype.numpy()
        flat = np.frombuffer(obj.raw, dt).copy()
        arr = flat.reshape(obj.shape, order="F" if obj.fortran else "C")
        return arr.astype(dt.newbyteorder("=")) if dt.byteorder == ">" else arr
    raise Refused(f"{type(obj).__name__} is not a numpy value")


def _dtype(descr: Any, align: Any = False, copy: Any = True) -> NumpyDType:
    return NumpyDType(descr, align, copy)


def _scalar(dtype: Any, raw: Any) -> NumpyScalar:
    return NumpyScalar(dtype, raw)


# functions, never classes: a class from find_class could be instantiated by NEWOBJ without its checks
NUMPY_GLOBALS: dict[str, Any] = {"numpy.ndarray": NDARRAY, "numpy.dtype": _dtype}
for _module in ("numpy.core", "numpy._core"):
    NUMPY_GLOBALS[f"{_module}.multiarray._reconstruct"] = _reconstruct
    NUMPY_GLOBALS[f"{_module}.multiarray.scalar"] = _scalar
    NUMPY_GLOBALS[f"{_module}.numeric._frombuffer"] = _frombuffer
