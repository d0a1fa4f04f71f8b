"""Logical dtypes, their byte sizes and how each is stored in a safetensors header.

A *logical* dtype is what the tensor is (``"bfloat16"``); its *storage code* is the
safetensors ``dtype`` string written in the header (``"BF16"``).  Every dtype that
safetensors has a code for is written under that code with its real shape, so plain
safetensors readers get the right dtype and shape.  The two dtypes safetensors has no
code for (complex32, complex128) are stored as raw bytes (``"U8"``, shape
``[nbytes]``) and the manifest keeps the logical dtype and shape.

``float4_e2m1fn_x2`` (torch's packed pair of 4-bit floats) is stored as safetensors'
``F4`` code, whose shape counts 4-bit elements: the header's last dimension is twice
the logical one.  Codes modelsafe cannot represent as a tensor (``F6_E2M3``,
``F6_E3M2``: 6-bit floats packed across bytes) are still read and listed; loading
such a tensor is an UnsupportedFormatError.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DType:
    name: str          # logical name, as torch spells it without the "torch." prefix
    itemsize: int      # bytes per element (0: not representable, see ``supported``)
    storage: str       # safetensors dtype code written in the header
    numpy: str | None  # numpy / ml_dtypes name, None when numpy has no such dtype
    packed: int = 1    # header elements per logical element (2 for F4 pairs)
    bits: int = 0      # bits per header element when not a whole byte multiple (F4, F6)
    supported: bool = True  # False: a safetensors code modelsafe reads but cannot load

    @property
    def stored_as_bytes(self) -> bool:
        return self.storage == "U8" and self.name != "uint8"

    @property
    def header_bits(self) -> int:
        """Bits per header element of this dtype's storage code."""
        return self.bits or self.itemsize * 8 // self.packed


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
    DType("float8_e4m3fnuz", 1, "F8_E4M3FNUZ", "float8_e4m3fnuz"),
    DType("float8_e5m2fnuz", 1, "F8_E5M2FNUZ", "float8_e5m2fnuz"),
    DType("float8_e8m0fnu", 1, "F8_E8M0", "float8_e8m0fnu"),
    DType("float4_e2m1fn_x2", 1, "F4", None, packed=2, bits=4),
    DType("complex32", 4, "U8", None),
    DType("complex64", 8, "C64", "complex64"),
    DType("complex128", 16, "U8", "complex128"),
]

BY_NAME: dict[str, DType] = {d.name: d for d in _TABLE}

# Codes of the safetensors spec that no torch or numpy dtype holds as written.
_UNSUPPORTED = [
    DType("float6_e2m3fn", 0, "F6_E2M3", None, bits=6, supported=False),
    DType("float6_e3m2fn", 0, "F6_E3M2", None, bits=6, supported=False),
]

# Every storage code of the safetensors spec, mapped to the logical dtype it holds.
STORAGE_CODES: dict[str, DType] = {d.storage: d for d in _TABLE if not d.stored_as_bytes}
STORAGE_CODES.update({d.storage: d for d in _UNSUPPORTED})


def odd_packing(dtype: DType) -> DType:
    """The unsupported stand-in for header data of packed ``dtype`` that does not split into whole items."""
    return DType(dtype.name.removesuffix("_x2"), 0, dtype.storage, None, bits=dtype.header_bits, supported=False)


def lookup(name: str) -> DType | None:
    """Return the logical dtype called ``name`` or None."""
    return BY_NAME.get(name)


def header_shape(dtype: DType, shape: tuple[int, ...] | list[int]) -> list[int]:
    """The header ``shape`` of a tensor of logical ``dtype`` and ``shape`` (F4 counts 4-bit halves)."""
    if dtype.stored_as_bytes:
        return [dtype.itemsize * _count(shape)]
    if dtype.packed != 1:  # a 0-d pair is stored as one row of both halves (the manifest keeps shape [])
        return [*shape[:-1], shape[-1] * dtype.packed] if shape else [dtype.packed]
    return list(shape)


def logical_shape(dtype: DType, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The logical shape of a header ``shape`` of storage ``dtype``; None when it has none."""
    if dtype.packed == 1:
        return shape
    if not shape or shape[-1] % dtype.packed:
        return None
    return (*shape[:-1], shape[-1] // dtype.packed)


def _count(shape: tuple[int, ...] | list[int]) -> int:
    count = 1
    for d in shape:
        count *= d
    return count


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
        kind = getattr(ml_dtypes, dtype.numpy, None)
        return None if kind is None else np.dtype(kind)


def from_numpy(dt: np.dtype) -> DType | None:
    """The logical dtype of numpy dtype ``dt`` or None when it has no fixed-size equivalent."""
    if dt.byteorder == ">" :
        return None
    return BY_NAME.get(dt.name)
