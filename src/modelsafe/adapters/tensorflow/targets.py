"""What ``ms.load_into`` restores in place: Keras models/layers, Keras optimizers, tf.Modules, variables."""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from ..protocol import StateMismatch, TargetDefaults
from .keras_objects import optimizer_state, variables_of
from .tf_objects import module_variables


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in value.shape)


class _ModuleTarget(TargetDefaults):
    plan = "module"
    framework = "tensorflow"

    def assign(self, obj: Any, value: dict) -> None:
        own = self.named_state(obj)
        for key, saved in value.items():
            own[key].assign(saved)


class KerasLayerTarget(_ModuleTarget):
    """A Keras model or layer: keys are the object-graph paths of Keras' weights files."""

    saved_kinds = ("keras.layer",)

    def handles(self, obj: Any) -> bool:
        return isinstance(obj, keras.layers.Layer)

    def named_state(self, obj: Any) -> dict[str, Any]:
        return variables_of(obj)


class ModuleTarget(_ModuleTarget):
    saved_kinds = ("tensorflow.module",)

    def handles(self, obj: Any) -> bool:
        return isinstance(obj, tf.Module)

    def named_state(self, obj: Any) -> dict[str, Any]:
        return module_variables(obj)


class KerasOptimizerTarget(TargetDefaults):
    """A built Keras optimizer: its variables in order, each shape checked."""

    plan = "state"
    saved_kinds = ("keras.optimizer",)
    framework = "tensorflow"

    def handles(self, obj: Any) -> bool:
        return isinstance(obj, keras.optimizers.Optimizer)

    def named_state(self, obj: Any) -> dict[str, Any]:
        return optimizer_state(obj)

    def conform(self, obj: Any, state: Any) -> Any:
        if not isinstance(state, list):
            raise StateMismatch("optimizer state", type(state).__name__, "a list of variables")
        own = obj.variables
        if len(state) != len(own):
            hint = " (build it first: optimizer.build(model.trainable_variables))" if len(own) <= 2 else ""
            raise StateMismatch("optimizer state", f"{len(state)} variables", f"{len(own)} variables{hint}")
        for i, (saved, var) in enumerate(zip(state, own)):
            if not hasattr(saved, "shape") or _shape(saved) != _shape(var):
                raise StateMismatch(f"optimizer variable {i} ({var.path})", str(getattr(saved, "shape", saved)), str(_shape(var)))
        return state

    def assign(self, obj: Any, value: Any) -> None:
        for var, saved in zip(obj.variables, value):
            var.assign(saved)


class VariableTarget(TargetDefaults):
    """A ``tf.Variable`` or Keras variable: the saved tensor is assigned into it."""

    plan = "tensor"
    framework = "tensorflow"

    def handles(self, obj: Any) -> bool:
        return isinstance(obj, (tf.Variable, keras.Variable))

    def assign(self, obj: Any, value: Any) -> None:
        obj.assign(value)


LOAD_TARGETS = (KerasLayerTarget(), KerasOptimizerTarget(), ModuleTarget(), VariableTarget())
