"""numpy adapter: ndarrays and numpy scalars (bfloat16 and float8 through ml_dtypes)."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ...errors import UnsupportedObjectError
from ...format import dtypes
from .. import LoadOptions, TensorInfo, TensorSpec


class NumpyAdapter:
    framework = "numpy"

    def handles(self, tp: type) -> bool:
        return issubclass(tp, (np.ndarray, np.generic)) and not issubclass(tp, np.matrix)

    def describe(self, obj: Any) -> TensorInfo:
        attrs: dict[str, Any] = {}
        if isinstance(obj, np.generic):
            attrs["scalar"] = True
            obj = np.asarray(obj)
        dt = dtypes.from_numpy(obj.dtype.newbyteorder("=")) if obj.dtype.byteorder == ">" else dtypes.from_numpy(obj.dtype)
        if dt is None:
            raise UnsupportedObjectError(
                f"numpy dtype {obj.dtype} has no fixed-size tensor equivalent; convert the array "
                "(for example to a numeric dtype) or save with allow_pickle=True"
            )
        identity = storage = view = None
        if obj.size and "scalar" not in attrs:
            identity = ("numpy", obj.__array_interface__["data"][0], obj.dtype.str, obj.shape, obj.strides)
            owner = _memory_owner(obj)
            storage = ("numpy", id(owner))
            view = _view_in(obj, owner)
        return TensorInfo(dt.name, tuple(obj.shape), identity, attrs, storage, view)

    def host_bytes(self, obj: Any) -> memoryview:
        arr = np.asarray(obj)
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        arr = np.ascontiguousarray(arr)
        return memoryview(arr.reshape(-1).view(np.uint8))

    def view_of(self, base: np.ndarray, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
        flat = base.reshape(-1)[offset:]
        return np.lib.stride_tricks.as_strided(flat, shape, tuple(s * base.itemsize for s in strides))

    def from_buffer(self, base: np.ndarray, specs: Sequence[TensorSpec], options: LoadOptions) -> list:
        out = []
        for spec in specs:
            dt = dtypes.BY_NAME[spec.dtype]
            npdt = dtypes.numpy_dtype(dt)
            if npdt is None:
                raise UnsupportedObjectError(
                    f"numpy has no dtype {spec.dtype}; load with framework='torch'"
                )
            raw = base[spec.offset : spec.offset + spec.nbytes]
            if options.copy:
                raw = raw.copy()
            arr = raw.view(npdt).reshape(spec.shape)
            if spec.attrs.get("scalar"):
                arr = arr[()]
            out.append(arr)
        return out


def _view_in(arr: np.ndarray, owner: np.ndarray) -> tuple[int, tuple[int, ...]] | None:
    """(offset, strides) of ``arr`` in elements within ``owner``'s memory, when they are whole elements."""
    if arr.dtype.byteorder == ">":
        return None
    size = arr.dtype.itemsize
    offset = arr.__array_interface__["data"][0] - owner.__array_interface__["data"][0]
    if offset % size or any(s < 0 or s % size for s in arr.strides):
        return None
    return offset // size, tuple(s // size for s in arr.strides)


def _memory_owner(arr: np.ndarray) -> Any:
    """The outermost array over ``arr``'s memory: every view of one array leads to the same one."""
    while isinstance(arr.base, np.ndarray):
        arr = arr.base
    return arr


ADAPTER = NumpyAdapter()
