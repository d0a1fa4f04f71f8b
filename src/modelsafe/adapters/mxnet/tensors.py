"""MXNet tensors: ``mx.nd.NDArray`` and ``mx.np.ndarray`` of every dtype MXNet 1.9 has.

MXNet 1.9 holds bool, uint8, int8, int32, int64, float16, float32 and float64 (no
int16, unsigned wider than 8 bits, bfloat16 or complex in its Python API).  A file
tensor of another dtype loaded with ``framework="mxnet"`` is an error naming the
tensor and the dtype (see :meth:`MXNetAdapter.supports_dtype`).

0-d and empty arrays exist only under MXNet's numpy shape semantics, so arrays are
made inside ``mx.util.np_shape(True)``; an ``mx.np.ndarray`` comes back as one
(tensor attribute ``variant="np"``), anything else as an ``NDArray``.
"""

from __future__ import annotations

from typing import Any, Sequence

import mxnet as mx
import numpy as np

from ...errors import InvalidArgumentError, UnsupportedObjectError
from ...format import dtypes
from .. import LoadOptions, TensorInfo, TensorSpec

# the dtypes MXNet 1.9's arrays hold (mx.nd.array refuses int16, uint16/32/64 and complex)
ALIGNMENT = 64  # MXNet's CPU kernels (MKL-DNN) expect 64-byte aligned arrays
DTYPES = ("bool", "uint8", "int8", "int32", "int64", "float16", "float32", "float64")


class MXNetAdapter:
    framework = "mxnet"

    def handles(self, tp: type) -> bool:
        return issubclass(tp, mx.nd.NDArray)

    def supports_dtype(self, name: str) -> bool:
        """True when MXNet has a dtype for the logical dtype ``name``."""
        return name in DTYPES

    def describe(self, obj: mx.nd.NDArray) -> TensorInfo:
        if obj.stype != "default":
            raise UnsupportedObjectError(
                f"MXNet {obj.stype} arrays are not stored; convert with .tostype('default') first"
            )
        dt = dtypes.from_numpy(np.dtype(obj.dtype))
        if dt is None or dt.name not in DTYPES:  # pragma: no cover - MXNet makes no other dtype
            raise UnsupportedObjectError(f"MXNet dtype {obj.dtype} is not supported by the format")
        attrs: dict[str, Any] = {}
        if isinstance(obj, mx.np.ndarray):
            attrs["variant"] = "np"
        if obj.ctx.device_type != "cpu":
            attrs["device"] = f"{obj.ctx.device_type}:{obj.ctx.device_id}"  # a hint, as torch's
        identity = ("mxnet", obj.handle.value) if obj.size else None  # one NDArray handle = one array
        return TensorInfo(dt.name, tuple(obj.shape), identity, attrs)

    def host_bytes(self, obj: mx.nd.NDArray) -> memoryview:
        # asnumpy waits for pending writes and copies to host memory (MXNet exposes no host view)
        arr = np.ascontiguousarray(obj.asnumpy())
        return memoryview(arr.reshape(-1).view(np.uint8))

    def from_buffer(self, base: np.ndarray, specs: Sequence[TensorSpec], options: LoadOptions) -> list:
        ctx = _context(options.map_location)
        out = []
        address = base.ctypes.data if base.size else 0
        with mx.util.np_shape(True):  # 0-d and empty shapes
            for spec in specs:
                if spec.dtype not in DTYPES:
                    raise UnsupportedObjectError(f"MXNet has no dtype {spec.dtype}; load with framework='numpy'")
                npdt = dtypes.numpy_dtype(dtypes.BY_NAME[spec.dtype])
                arr = base[spec.offset : spec.offset + spec.nbytes].view(npdt).reshape(spec.shape)
                # zero-copy (DLPack) over the file's private copy-on-write mapping: MXNet's own copy ran at
                # ~300 MB/s here (bench/README.md); a transient buffer, a misaligned tensor and int8 (which MXNet's
                # from_numpy does not take) are copied
                if options.copy or not spec.nbytes or (address + spec.offset) % ALIGNMENT or spec.dtype == "int8":
                    t = mx.nd.array(arr, ctx=mx.cpu(), dtype=npdt)
                else:
                    t = mx.nd.from_numpy(arr, zero_copy=True)  # keeps arr (and so the mapping) alive
                if ctx != mx.cpu():
                    t = t.as_in_context(ctx)
                out.append(t.as_np_ndarray() if spec.attrs.get("variant") == "np" else t)
        return out


def _context(map_location: Any) -> mx.Context:
    """Where loaded arrays go: the CPU unless ``map_location`` names a context ("gpu(0)", "cpu", an mx.Context)."""
    if map_location is None:
        return mx.cpu()
    if isinstance(map_location, mx.Context):
        return map_location
    if isinstance(map_location, str):
        kind, _, rest = map_location.replace("(", ":").rstrip(")").partition(":")  # "gpu(0)" or "gpu:0"
        if kind in ("cpu", "gpu") and (not rest or rest.isdigit()):
            return mx.Context(kind, int(rest or 0))
    raise InvalidArgumentError(
        f"map_location for MXNet arrays must be an mx.Context or 'cpu' / 'gpu(0)', not {map_location!r}"
    )


ADAPTER = MXNetAdapter()
