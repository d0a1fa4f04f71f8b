"""TensorFlow and Keras 3: tensors, variables, models, layers and optimizers.

``FRAMEWORK`` is this package's :class:`~modelsafe.adapters.protocol.Framework` record.
Importing the package imports TensorFlow; Keras is imported the first time a Keras
object is saved or loaded (``keras_objects``).
"""

from __future__ import annotations

from .tensors import ADAPTER

__all__ = ["ADAPTER", "CODECS"]


def __getattr__(name: str):  # Keras objects on demand: tensors alone never import Keras' saving code
    if name == "CODECS":
        from .keras_objects import CODECS

        return CODECS
    raise AttributeError(name)
