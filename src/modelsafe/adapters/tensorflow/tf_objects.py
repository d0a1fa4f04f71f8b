"""``tf.Module`` trees: a recipe (``@ms.rebuildable`` or ``ms.build``) plus their variables by attribute path.

Keys are the attribute paths TensorFlow itself walks (``encoder.layers.0.w``), so
``ms.load_into(module, path)`` matches a module built from code.  Without a recipe,
``ms.load`` says so and names ``ms.load_into``.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from ...errors import MissingRecipeError
from ...objects import decode_recipe, encode_object, encode_recipe
from ...recipes import qualified_name, recipe_of
from ...tree import Flattener, Unflattener


def _is_variable(value: Any) -> bool:
    return isinstance(value, tf.Variable)


def module_variables(module: tf.Module) -> dict[str, tf.Variable]:
    """``{"encoder.w": variable, ...}``: every variable the module reaches, by attribute path."""
    # _flatten is tf.Module's documented walker (variables/trainable_variables are built on it)
    found = module._flatten(predicate=_is_variable, with_path=True)
    return {".".join(str(p) for p in path): v for path, v in found}


class ModuleCodec:
    kinds = ("tensorflow.module",)

    def handles(self, tp: type) -> bool:
        return issubclass(tp, tf.Module)

    def encode(self, fl: Flattener, module: tf.Module, path: tuple) -> dict:
        recipe = recipe_of(module)

        def body(node: dict) -> None:
            if recipe is None:
                node["recipe"] = None
            else:
                node["recipe"] = encode_recipe(fl, recipe, path, qualified_name(type(module)))
            node["state"] = fl.encode(module_variables(module), path)

        return encode_object(fl, module, path, "tensorflow.module", body)

    def decode(self, un: Unflattener, node: dict) -> tf.Module:
        from .keras_objects import assign_variables  # one checked assignment for every framework object

        if node.get("recipe") is None:
            where = node.get("path", "an object")
            raise MissingRecipeError(
                f"{un.source}: {where} is a {node.get('class', 'tf.Module')} saved without a recipe, so ms.load cannot "
                "rebuild it. Decorate the class with @ms.rebuildable (or create it with ms.build(cls, ...)) before "
                "saving; to restore these variables into a module you construct, use ms.load_into(module, path)",
                path=un.source, key=str(where),
            )
        module = decode_recipe(un, node["recipe"], class_hint=node.get("class"), kind=(_is_module_class, "a tf.Module class"))
        state = un.decode(node.get("state"))
        if not isinstance(state, dict):
            raise un.bad(node, "a tf.Module's state must be a dict")
        assign_variables(str(node.get("path")), un.source, module_variables(module), state)
        return module


def _is_module_class(target: Any) -> bool:
    return isinstance(target, type) and issubclass(target, tf.Module)


CODECS = [ModuleCodec()]
