"""TensorFlow tensors: ``tf.Tensor``, ``tf.Variable`` and Keras variables of every dtype TF has.

Saving reads each tensor's bytes through numpy (TF's CPU tensors share them); loading
copies the file's bytes into new tensors (TF cannot view foreign memory safely).  A
``tf.Variable`` comes back as a ``tf.Variable`` (same ``trainable`` flag), everything
else as a ``tf.Tensor``; a dtype TF lacks is an error naming the tensor.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from ...errors import UnsupportedObjectError
from ...format import dtypes
from .. import LoadOptions, TensorInfo, TensorSpec


def _keras_variable_type() -> type | None:
    try:
        import keras
    except ImportError:  # tensorflow without keras: only TF's own tensors
        return None
    return keras.Variable


_KERAS_VARIABLE = _keras_variable_type()


def tf_dtype(name: str, tensor: str | None = None) -> tf.DType:
    """The TF dtype of the logical dtype ``name``; an error naming ``tensor`` when TF has none."""
    npdt = dtypes.numpy_dtype(dtypes.BY_NAME[name])
    try:
        if npdt is None:
            raise TypeError(name)
        return tf.as_dtype(npdt)
    except TypeError:
        where = f"tensor {tensor!r}" if tensor else "a tensor"
        raise UnsupportedObjectError(
            f"{where} has dtype {name}, which TensorFlow does not have; load it with framework='numpy' "
            "(or 'torch') instead",
            key=tensor,
        ) from None


def _plain(obj: Any) -> Any:
    """The TF value under a Keras variable (its ``tf.Variable``), else ``obj``."""
    if _KERAS_VARIABLE is not None and isinstance(obj, _KERAS_VARIABLE):
        return obj.value
    return obj


class TensorFlowAdapter:
    framework = "tensorflow"

    def handles(self, tp: type) -> bool:
        if _KERAS_VARIABLE is not None and issubclass(tp, _KERAS_VARIABLE):
            return True
        return issubclass(tp, (tf.Tensor, tf.Variable)) and not issubclass(tp, (tf.RaggedTensor, tf.SparseTensor))

    def describe(self, obj: Any) -> TensorInfo:
        value = _plain(obj)
        if value.dtype in (tf.string, tf.resource, tf.variant):
            raise UnsupportedObjectError(
                f"TensorFlow tensors of dtype {value.dtype.name} hold no fixed-size numbers; convert them first "
                "(for example with tf.strings.unicode_decode) or save with allow_pickle=True"
            )
        dt = dtypes.from_numpy(np.dtype(value.dtype.as_numpy_dtype))
        if dt is None:
            raise UnsupportedObjectError(f"TensorFlow dtype {value.dtype.name} is not supported by the format")
        attrs: dict[str, Any] = {}
        if isinstance(value, tf.Variable):
            attrs["variable"] = True
            if not value.trainable:
                attrs["trainable"] = False
        # the same Python object saved twice is stored once (a variable shared by two layers)
        return TensorInfo(dt.name, tuple(int(d) for d in value.shape), ("tensorflow", id(obj)), attrs)

    def host_bytes(self, obj: Any) -> memoryview:
        arr = np.ascontiguousarray(_plain(obj).numpy())
        if not arr.size:
            return memoryview(b"")
        return memoryview(arr.reshape(-1).view(np.uint8))

    def from_buffer(self, base: np.ndarray, specs: Sequence[TensorSpec], options: LoadOptions) -> list:
        out = []
        for spec in specs:
            dt = tf_dtype(spec.dtype, getattr(spec, "name", None))
            npdt = np.dtype(dt.as_numpy_dtype)
            raw = base[spec.offset : spec.offset + spec.nbytes]
            arr = raw.view(npdt).reshape(spec.shape) if spec.nbytes else np.zeros(spec.shape, npdt)
            t = tf.constant(arr, dtype=dt)  # a copy: the tensor owns its memory
            if spec.attrs.get("variable"):
                t = tf.Variable(t, trainable=spec.attrs.get("trainable", True))
            out.append(t)
        return out


ADAPTER = TensorFlowAdapter()
