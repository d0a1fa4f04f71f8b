"""Flax objects in the tree: FrozenDict, NNX Variables, States, Rngs and Modules.

Linen parameters are plain nested dicts (or a ``FrozenDict``) of arrays and need
nothing else; Optax states are namedtuples, which the tree stores as records and
gives back as the real Optax class (registered by :mod:`.builtins`; nothing a file
names is imported).

An NNX module is stored as its recipe (``@ms.rebuildable`` / ``ms.build``) and its
``nnx.state``; ``ms.load`` rebuilds it and ``nnx.update``s the state into it.  A
Variable keeps its class (``Param``, ``BatchStat``, ``RngKey``: found through the
registry) and its plain metadata; a typed PRNG key is stored as its key data and
implementation name.
"""

from __future__ import annotations

from typing import Any

import jax
from flax import nnx
from flax.core import FrozenDict

from ...errors import MissingRecipeError
from ...objects import decode_recipe, encode_object, encode_recipe, in_recipe
from ...recipes import qualified_name, recipe_of, registered_name
from ...tree import Attr, Flattener, Unflattener
from .tensors import is_key_array

# typed PRNG key implementations a file may name (jax.random.key_impl)
KEY_IMPLS = ("threefry2x32", "rbg", "unsafe_rbg")
_PLAIN = (type(None), bool, int, float, str)


def _storable_metadata(name: Any, value: Any) -> bool:
    """Plain metadata (sharding names, tags); never Flax's value hooks (``on_get_value``: callables)."""
    if not isinstance(name, str) or name.startswith("on_"):
        return False
    if isinstance(value, (tuple, list)):
        return all(type(v) in _PLAIN for v in value)
    return type(value) in _PLAIN


class FrozenDictCodec:
    """``flax.core.FrozenDict`` (Linen variables of older Flax): stored as its dict, rebuilt frozen."""

    kinds = ("flax.frozen_dict",)

    def handles(self, tp: type) -> bool:
        return issubclass(tp, FrozenDict)

    def encode(self, fl: Flattener, obj: Any, path: tuple) -> dict:
        def body(node: dict) -> None:
            node["state"] = fl.encode(obj.unfreeze() if type(obj) is FrozenDict else dict(obj), path)

        return encode_object(fl, obj, path, self.kinds[0], body)

    def decode(self, un: Unflattener, node: dict) -> Any:
        state = un.decode(node.get("state"))
        if not isinstance(state, dict):
            raise un.bad(node, "a FrozenDict holds a dict")
        return FrozenDict(state)


class VariableCodec:
    """An NNX Variable: its class (registry only), plain metadata, and value (a typed key as key data)."""

    kinds = ("flax.nnx.variable",)

    def handles(self, tp: type) -> bool:
        return issubclass(tp, nnx.Variable)

    def encode(self, fl: Flattener, obj: Any, path: tuple) -> dict:
        def body(node: dict) -> None:
            value = obj.get_raw_value()
            node["recipe"] = {"name": registered_name(type(obj)) or qualified_name(type(obj)), "args": [], "kwargs": []}
            meta = {k: v for k, v in obj.get_metadata().items() if _storable_metadata(k, v)}
            node["metadata"] = fl.encode(meta, path + (Attr("metadata"),))
            if isinstance(value, jax.Array) and is_key_array(value):
                node["key_impl"] = str(jax.random.key_impl(value))
                value = jax.random.key_data(value)
            node["state"] = fl.encode(value, path)

        return encode_object(fl, obj, path, self.kinds[0], body)

    def decode(self, un: Unflattener, node: dict) -> Any:
        cls = decode_recipe(un, node.get("recipe"), build=False, class_hint=node.get("class"), kind=_VARIABLE)[0]
        meta = un.decode(node.get("metadata", {"dict": []}))
        if not (isinstance(meta, dict) and all(_storable_metadata(k, v) for k, v in meta.items())):
            raise un.bad(node, "Variable metadata must map names (not hooks such as on_get_value) to plain values")
        value = un.decode(node.get("state"))
        impl = node.get("key_impl")
        if impl is not None:
            if impl not in KEY_IMPLS:
                raise un.bad(node, f"unknown PRNG key implementation (known: {', '.join(KEY_IMPLS)})")
            value = jax.random.wrap_key_data(value, impl=impl)
        return cls(value, **meta)


def _is_subclass(base: type) -> Any:
    return lambda target: isinstance(target, type) and issubclass(target, base)


_VARIABLE = (_is_subclass(nnx.Variable), "a Flax NNX Variable class")
_MODULE = (_is_subclass(nnx.Module), "a Flax NNX Module class")


def _plain_tree(state: Any) -> Any:
    """A nested ``nnx.State`` as nested dicts (its leaves untouched)."""
    if isinstance(state, nnx.State):
        return {k: _plain_tree(v) for k, v in state.items()}
    return state


class StateCodec:
    """``nnx.state(model)``: a nested mapping of Variables, rebuilt as an ``nnx.State``."""

    kinds = ("flax.nnx.state",)

    def handles(self, tp: type) -> bool:
        return issubclass(tp, nnx.State)

    def encode(self, fl: Flattener, obj: Any, path: tuple) -> dict:
        def body(node: dict) -> None:
            node["state"] = fl.encode(_plain_tree(obj), path)

        return encode_object(fl, obj, path, self.kinds[0], body)

    def decode(self, un: Unflattener, node: dict) -> Any:
        state = un.decode(node.get("state"))
        if not isinstance(state, dict):
            raise un.bad(node, "an NNX State holds a dict")
        return nnx.State(state)


class RngsCodec:
    """``nnx.Rngs``: its streams' keys and counts, rebuilt with the same stream names."""

    kinds = ("flax.nnx.rngs",)

    def handles(self, tp: type) -> bool:
        return tp is nnx.Rngs

    def encode(self, fl: Flattener, obj: Any, path: tuple) -> dict:
        def body(node: dict) -> None:
            node["state"] = fl.encode(nnx.state(obj), path)

        return encode_object(fl, obj, path, self.kinds[0], body)

    def decode(self, un: Unflattener, node: dict) -> Any:
        state = un.decode(node.get("state"))
        if not isinstance(state, nnx.State) or not all(isinstance(k, str) and k.isidentifier() for k in state):
            raise un.bad(node, "nnx.Rngs state must be an NNX State keyed by stream names")
        rngs = nnx.Rngs(**{name: 0 for name in state})
        nnx.update(rngs, state)
        return rngs


class ModuleCodec:
    """An NNX Module: recipe + ``nnx.state``; rebuilt from the recipe, then the state is put back."""

    kinds = ("flax.nnx.module",)

    def handles(self, tp: type) -> bool:
        return issubclass(tp, nnx.Module) and tp is not nnx.Rngs

    def encode(self, fl: Flattener, obj: Any, path: tuple) -> dict:
        recipe = recipe_of(obj)
        with_state = not in_recipe(fl)

        def body(node: dict) -> None:
            if recipe is not None:
                node["recipe"] = encode_recipe(fl, recipe, path, type(obj).__qualname__)
            else:
                node["why"] = "it was not made with a recipe"
            if with_state:
                node["state"] = fl.encode(nnx.state(obj), path)

        return encode_object(fl, obj, path, self.kinds[0], body, with_state=with_state)

    def decode(self, un: Unflattener, node: dict) -> Any:
        if "recipe" not in node:
            where = node.get("path", "an object")
            raise MissingRecipeError(
                f"{un.source}: {where} is a Flax NNX module ({node.get('class')}) saved without a recipe, so "
                "ms.load cannot rebuild it. Decorate the class with @ms.rebuildable (or create it with "
                "ms.build(cls, ...)) before saving; to restore these weights into a module you construct, use "
                "ms.load_into(module, path)",
                path=un.source, key=str(where),
            )
        module = decode_recipe(un, node["recipe"], class_hint=node.get("class"), kind=_MODULE)
        if "state" in node:
            nnx.update(module, un.decode(node["state"]))
        return module


CODECS = (FrozenDictCodec(), VariableCodec(), StateCodec(), RngsCodec(), ModuleCodec())
