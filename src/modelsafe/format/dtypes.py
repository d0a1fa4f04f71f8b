"""Logical dtypes, their byte sizes and how each is stored in a safetensors header.

A *logical* dtype is what the tensor is (``"bfloat16"``); its *storage code* is the
safetensors ``dtype`` string written in the header (``"BF16"``).  Dtypes that older
safetensors readers do not know are stored as raw bytes (``"U8"``, shape ``[nbytes]``)
and the manifest keeps the logical dtype and shape, so the file stays readable by
every safetensors version while modelsafe restores the exact dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str          # logical name, as torch spells it without the "torch." prefix
    itemsize: int      # bytes per element
    storage: str       # safetensors dtype code written in the header
    numpy: str | None  # numpy / ml_dtypes name, None when numpy has no such dtype

    @property
    def stored_as_bytes(self) -> bool:
        return self.storage == "U8" and self.name != "uint8"


_TABLE = [
    DType("bool", 1, "BOOL", "bool"),
    DType("uint8", 1, "U8", "uint8"),
    DType("int8", 1, "I8", "int8"),
    DType("uint16", 2, "U16", "uint16"),
    DType("int16", 2, "I16", "int16"),
    DType("uint32", 4, "U32", "uint32"),
    DType("int32", 4, "I32", "int32"),
    DType("uint64", 8, "U64", "uint64"),
    DType("int64", 8, "I64", "int64"),
    DType("float16", 2, "F16", "float16"),
    DType("bfloat16", 2, "BF16", "bfloat16"),
    DType("float32", 4, "F32", "float32"),
    DType("float64", 8, "F64", "float64"),
    DType("float8_e4m3fn", 1, "F8_E4M3", "float8_e4m3fn"),
    DType("float8_e5m2", 1, "F8_E5M2", "float8_e5m2"),
    DType("float8_e4m3fnuz", 1, "U8", "float8_e4m3fnuz"),
    DType("float8_e5m2fnuz", 1, "U8", "float8_e5m2fnuz"),
    DType("float8_e8m0fnu", 1, "U8", "float8_e8m0fnu"),
    DType("complex32", 4, "U8", None),
    DType("complex64", 8, "C64", "complex64"),
    DType("complex128", 16, "U8", "complex128"),
]

BY_NAME: dict[str, DType] = {d.name: d for d in _TABLE}

# Storage codes a foreign safetensors file may use, mapped to the logical dtype.
# Includes codes newer safetensors versions write natively.
STORAGE_CODES: dict[str, DType] = {d.storage: d for d in _TABLE if not d.stored_as_bytes}
STORAGE_CODES.update(
    {
        "F8_E4M3FNUZ": BY_NAME["float8_e4m3fnuz"],
        "F8_E5M2FNUZ": BY_NAME["float8_e5m2fnuz"],
        "F8_E8M0": BY_NAME["float8_e8m0fnu"],
    }
)


def lookup(name: str) -> DType | None:
    """Return the logical dtype called ``name`` or None."""
    return BY_NAME.get(name)


def numpy_dtype(dtype: DType) -> np.dtype | None:
    """The numpy dtype for ``dtype`` (via ml_dtypes for bfloat16 and float8), or None."""
    if dtype.numpy is None:
        return None
    try:
        return np.dtype(dtype.numpy)
    except TypeError:
        try:
            import ml_dtypes
        except ImportError:  # pragma: no cover - ml_dtypes is a core dependency
            return None
        return np.dtype(getattr(ml_dtypes, dtype.numpy))


def from_numpy(dt: np.dtype) -> DType | None:
    """The logical dtype of numpy dtype ``dt`` or None when it has no fixed-size equivalent."""
    if dt.byteorder == ">" :
        return None
    return BY_NAME.get(dt.name)
