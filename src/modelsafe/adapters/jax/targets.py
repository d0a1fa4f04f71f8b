"""What ``ms.load_into`` restores in place: Flax NNX modules (mutable), and why not jax arrays.

An NNX module takes a saved ``nnx.state`` (or a saved module's state) as a whole:
every saved key must exist in the module with the same shape and dtype class, and
only then ``nnx.update`` writes it.  jax arrays, and pytrees made only of them, are
immutable: there is nothing to fill in place, so the error says to use ``ms.load``.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from ...errors import InvalidArgumentError
from ..protocol import StateMismatch, TargetDefaults

_CLASSES = (("bool", np.bool_), ("complex", np.complexfloating), ("float", np.floating), ("int", np.integer))


def _dtype_class(value: Any) -> str:
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return type(value).__name__
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return "key"
    for name, kind in _CLASSES:
        if jax.dtypes.issubdtype(dtype, kind):
            return name
    return str(dtype)


def flat_values(state: Any) -> dict[str, Any]:
    """``{"layer.kernel": value}`` of a nested mapping of Variables or arrays (an ``nnx.State``, a dict)."""
    from flax import nnx

    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, nnx.Variable):
            out[prefix.rstrip(".")] = node.get_raw_value()
        elif hasattr(node, "items") and not isinstance(node, jax.Array):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix.rstrip(".")] = node

    walk(state, "")
    return out


def _lone_module_state(state: Any) -> Any:
    """The state of the one NNX module (or State) in a saved training dict (``{"model": m, "step": 3}``), else ``state``."""
    from flax import nnx

    if isinstance(state, nnx.Module):
        return nnx.state(state)
    if isinstance(state, dict) and not isinstance(state, nnx.State):
        found = [v for v in state.values() if isinstance(v, (nnx.Module, nnx.State))]
        if len(found) == 1 and not any(isinstance(v, jax.Array) for v in state.values()):
            return _lone_module_state(found[0])
    return state


class NnxModuleTarget(TargetDefaults):
    """``ms.load_into(nnx_module, path)``: the saved NNX state replaces the module's, checked first."""

    plan = "state"
    saved_kinds = ("flax.nnx.module", "flax.nnx.state")
    framework = "jax"

    def handles(self, obj: Any) -> bool:
        from flax import nnx

        return isinstance(obj, nnx.Module)

    def named_state(self, obj: Any) -> dict[str, Any]:
        from flax import nnx

        return flat_values(nnx.state(obj))

    def conform(self, obj: Any, state: Any) -> Any:
        state = _lone_module_state(state)
        mine, saved = self.named_state(obj), flat_values(state)
        unexpected = sorted(set(saved) - set(mine))
        missing = sorted(set(mine) - set(saved))
        if unexpected or missing:
            raise StateMismatch(
                type(obj).__name__, f"keys missing in the file {missing[:8]}, unexpected {unexpected[:8]}", "the module's keys"
            )
        for key, value in saved.items():
            have = mine[key]
            if tuple(np.shape(value)) != tuple(np.shape(have)) or _dtype_class(value) != _dtype_class(have):
                raise StateMismatch(
                    key, f"{tuple(np.shape(value))} {_dtype_class(value)}", f"{tuple(np.shape(have))} {_dtype_class(have)}"
                )
        return state

    def assign(self, obj: Any, value: Any) -> None:
        from flax import nnx

        nnx.update(obj, value)


class ImmutableArrayTarget(TargetDefaults):
    """A jax array as a ``load_into`` target: refused while the load is planned, before anything is written.

    Left to the generic planner, a tuple of arrays (an Optax state) would be skipped and
    a lone array reported as "no target"; this says what to do instead.
    """

    plan = "state"
    framework = "jax"

    def handles(self, obj: Any) -> bool:
        if isinstance(obj, jax.Array):
            self.conform(obj, None)
        return False

    def conform(self, obj: Any, state: Any) -> Any:
        raise InvalidArgumentError(
            "ms.load_into cannot restore into a jax array: jax arrays (and tuples, namedtuples and FrozenDicts of "
            "them, such as Optax states) are immutable. Use tree = ms.load(path, framework='jax') and carry on with "
            "the returned tree, load into a dict (its entries are replaced), or into a Flax NNX module"
        )

    def assign(self, obj: Any, value: Any) -> None:
        self.conform(obj, value)


LOAD_TARGETS = (NnxModuleTarget(), ImmutableArrayTarget())
