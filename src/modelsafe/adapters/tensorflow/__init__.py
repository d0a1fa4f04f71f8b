"""TensorFlow and Keras 3: tensors, variables, ``tf.Module`` trees, Keras models, layers and optimizers.

``FRAMEWORK`` is this package's :class:`~modelsafe.adapters.protocol.Framework` record:

* tensors: ``tf.Tensor``, ``tf.Variable`` and Keras variables of every dtype TF has
  (:mod:`.tensors`);
* codecs: Keras layers/models and optimizers as checked config + variables
  (:mod:`.keras_objects`, classes resolved by :mod:`.keras_config`), ``tf.Module`` trees
  (:mod:`.tf_objects`);
* built-in recipes: Keras' layers, models, optimizers, initializers, losses, metrics...;
* load_into targets (:mod:`.targets`); Keras' global seed generator for exact resume (:mod:`.rng`).  Async saves need no snapshot of their own:
  TF tensors are immutable and a variable's bytes are read as a copy.
"""

from __future__ import annotations

from ..protocol import Framework
from .keras_objects import CODECS as _KERAS_CODECS, register_builtins
from .rng import RNG
from .targets import LOAD_TARGETS
from .tensors import ADAPTER
from .tf_objects import CODECS as _TF_CODECS

CODECS = [*_KERAS_CODECS, *_TF_CODECS]

FRAMEWORK = Framework(
    name="tensorflow",
    tensors=ADAPTER,
    codecs=CODECS,
    register_builtins=register_builtins,
    load_targets=LOAD_TARGETS,
    rng=RNG,
    format_tag="tf",  # what safetensors' own TensorFlow writer puts in the header
)

__all__ = ["ADAPTER", "CODECS", "FRAMEWORK"]
