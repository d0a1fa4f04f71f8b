"""jax.Array <-> bytes: every dtype the format has, bit-exact; placement by ``map_location``.

A typed PRNG key array (``jax.random.key``) has no bytes of its own to store: the
Flax codecs store ``jax.random.key_data`` and its implementation name instead, and a
key array met anywhere else is refused with that advice.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from ...errors import InvalidArgumentError, UnsupportedObjectError
from ...format import dtypes
from .. import LoadOptions, TensorInfo, TensorSpec


def is_key_array(obj: Any) -> bool:
    """True for a typed PRNG key array (``jax.random.key(0)``), whose dtype is no numeric dtype."""
    return jax.dtypes.issubdtype(obj.dtype, jax.dtypes.prng_key)


def _x64_lacks(npdt: np.dtype) -> bool:
    """True when this process's jax would silently narrow ``npdt`` (64-bit types with jax_enable_x64 off)."""
    return np.dtype(jax.dtypes.canonicalize_dtype(npdt)) != npdt


class JaxAdapter:
    framework = "jax"

    def handles(self, tp: type) -> bool:
        return issubclass(tp, jax.Array)

    def describe(self, obj: Any) -> TensorInfo:
        if isinstance(obj, jax.core.Tracer):
            raise UnsupportedObjectError("a traced value inside jax.jit/grad has no data to save; save outside the transformation")
        if obj.is_deleted():
            raise UnsupportedObjectError("the array was deleted or donated (jit donate_argnums); save it before donating it")
        if is_key_array(obj):
            raise UnsupportedObjectError(
                f"typed PRNG key arrays ({obj.dtype}) are not stored as tensors; save jax.random.key_data(key) "
                "and rebuild with jax.random.wrap_key_data (inside Flax NNX state this happens by itself)"
            )
        dt = dtypes.from_numpy(np.dtype(obj.dtype))
        if dt is None:
            raise UnsupportedObjectError(
                f"the format has no dtype {obj.dtype}; convert the array (e.g. .astype(jnp.int8)) before saving"
            )
        # arrays are immutable: the same object met twice is the same tensor (tied weights)
        identity = ("jax", id(obj)) if obj.size else None
        return TensorInfo(dt.name, tuple(obj.shape), identity)

    def host_bytes(self, obj: Any) -> memoryview:
        if isinstance(obj, jax.Array) and obj.is_deleted():
            raise UnsupportedObjectError("the array was deleted or donated while it was being saved; save a copy")
        arr = np.ascontiguousarray(np.asarray(obj))  # zero-copy for a CPU array
        if not arr.size:
            return memoryview(b"")
        return memoryview(arr.reshape(-1).view(np.uint8))

    def from_buffer(self, base: np.ndarray, specs: Sequence[TensorSpec], options: LoadOptions) -> list:
        place = _placement(options.map_location)
        out = []
        for spec in specs:
            npdt = _numpy_dtype(spec)
            if spec.nbytes == 0:
                arr = np.empty(spec.shape, npdt)
            else:
                raw = base[spec.offset : spec.offset + spec.nbytes]
                arr = raw.view(npdt).reshape(spec.shape)
                if options.copy:  # jax may alias host memory on CPU: never a transient buffer
                    arr = arr.copy()
            out.append(place(arr))
        return out


def _numpy_dtype(spec: TensorSpec) -> np.dtype:
    label = f"tensor {spec.name!r}"
    npdt = dtypes.numpy_dtype(dtypes.BY_NAME[spec.dtype])
    if npdt is None:
        raise UnsupportedObjectError(
            f"{label} has dtype {spec.dtype}, which jax has no dtype for; load it with framework='torch'",
            key=spec.name or None,
        )
    if _x64_lacks(npdt):
        raise UnsupportedObjectError(
            f"{label} has dtype {spec.dtype}, which jax holds only with 64-bit mode on (it would be narrowed "
            "silently); call jax.config.update('jax_enable_x64', True) before loading, or load with framework='numpy'",
            key=spec.name or None,
        )
    return npdt


def _placement(map_location: Any) -> Any:
    """A function numpy array -> jax.Array on the device or sharding ``map_location`` names."""
    if map_location is None:
        return jax.device_put
    if isinstance(map_location, (jax.Device, jax.sharding.Sharding)):
        target = map_location
    elif isinstance(map_location, str):
        kind, _, index = map_location.partition(":")
        try:
            devices = jax.devices(kind)
            target = devices[int(index) if index else 0]
        except (RuntimeError, ValueError, IndexError) as exc:
            raise InvalidArgumentError(
                f"map_location={map_location!r}: jax has no such device ({exc}); pass 'cpu', 'gpu:0', a jax.Device "
                "or a jax.sharding.Sharding"
            ) from None
    else:
        raise InvalidArgumentError(
            f"with framework='jax', map_location must be a device name ('cpu', 'gpu:0'), a jax.Device or a "
            f"jax.sharding.Sharding, not {map_location!r}"
        )
    return lambda arr: jax.device_put(arr, target)


def snapshot(obj: Any, memo: dict) -> Any:
    """A private copy for an async save: arrays are immutable, but a later jit may donate (delete) their buffers."""
    found = memo.get(id(obj))
    if found is None:
        if obj.is_deleted():
            raise UnsupportedObjectError("the array was deleted or donated before the save; save it before donating it")
        found = memo[id(obj)] = (obj, obj.copy())  # the original is kept so its id stays unique
    return found[1]


ADAPTER = JaxAdapter()
