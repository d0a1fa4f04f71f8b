"""Keras 3 models, layers and optimizers: stored as config + variables, never pickled.

* A model or layer is stored as its Keras config (JSON, ``keras.saving.serialize_keras_object``)
  and its variables keyed by their place in the object graph, as Keras' own
  ``.weights.h5`` files key them (``layers/dense/vars/0``): the keys do not depend on
  auto-generated layer names, so a clone built from code matches.  ``ms.load`` rebuilds
  it from the config after :mod:`.keras_config` has checked every class the config
  names, then assigns the variables.
* An optimizer is stored as its config, its variables in order and references to the
  model variables it was built for (the leaves of a model saved in the same tree), so
  it comes back built for the rebuilt model, with its state.

Importing this module registers Keras' built-in layers, models, optimizers,
initializers, regularizers, constraints, losses, metrics and dtype policies as
recipes named ``keras.layers.Dense`` and so on.
"""

from __future__ import annotations

import json
from typing import Any

import keras
from keras.src.saving import saving_lib  # the object-graph walk of Keras' own weights files (no public getter)
from keras.src.saving.keras_saveable import KerasSaveable
from keras.src.utils import naming

from ...errors import CorruptCheckpointError, IncompatibleStateError, UnsupportedObjectError
from ...objects import encode_object
from ...recipes import register
from ...tree import Flattener, Unflattener, format_path
from .keras_config import deserialize

LEAVES = "keras.variable_leaves"   # Flattener.context: id(variable) -> leaf name
LOADED = "keras.loaded_variables"  # Unflattener.context: leaf name -> rebuilt model's variable
MAX_CONFIG_CHARS = 16 << 20

# classes that load files or are not part of a model: never built from a file
_EXCLUDED = {"keras.layers.TFSMLayer"}
_NAMESPACES = ("layers", "models", "optimizers", "optimizers.schedules", "initializers", "regularizers",
               "constraints", "losses", "metrics", "dtype_policies")


def register_builtins() -> None:
    """Register every public Keras class of the modelling namespaces as ``keras.<namespace>.<Name>``."""
    spaces = {"": keras}
    for dotted in _NAMESPACES:
        module = keras
        for part in dotted.split("."):
            module = getattr(module, part)
        spaces[dotted] = module
    for dotted, module in spaces.items():
        prefix = f"keras.{dotted}." if dotted else "keras."
        for name, obj in vars(module).items():
            full = prefix + name
            if isinstance(obj, type) and not name.startswith("_") and full not in _EXCLUDED and (
                dotted or issubclass(obj, (keras.Model, keras.DTypePolicy))  # top level: models and policies only
            ):
                register(obj, name=full)
    # what keras.Model(inputs, outputs) builds; its configs name it where it is defined
    from keras.src.models.functional import Functional

    register(Functional, name="keras.Functional")


register_builtins()


# -- the variables of a Keras object, keyed by their place in its object graph ----------------

def _join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def variables_of(obj: Any) -> dict[str, Any]:
    """``{"layers/dense/vars/0": variable, ...}`` for a model or layer (optimizers and metrics excluded)."""
    out: dict[str, Any] = {}
    visited: set[int] = set()

    def visit(saveable: Any, path: str) -> None:
        if id(saveable) in visited or isinstance(saveable, (keras.optimizers.Optimizer, keras.metrics.Metric)):
            return
        visited.add(id(saveable))
        if hasattr(saveable, "save_own_variables"):
            store: dict[str, Any] = {}
            saveable.save_own_variables(store)
            for key, value in store.items():
                out[_join(path, f"vars/{key}")] = value
        for attr, child in saving_lib._walk_saveable(saveable):
            if isinstance(child, KerasSaveable):
                visit(child, _join(path, attr))
            elif isinstance(child, (list, dict, tuple)):
                container(child, _join(path, attr))

    def container(items: Any, path: str) -> None:
        used: dict[str, int] = {}
        for child in items.values() if isinstance(items, dict) else items:
            if isinstance(child, KerasSaveable):  # by class, not by auto-generated name (as Keras does)
                base = naming.to_snake_case(type(child).__name__)
                count = used.get(base, 0)
                used[base] = count + 1
                visit(child, _join(path, base if count == 0 else f"{base}_{count}"))

    visit(obj, "")
    return out


def _note_leaves(fl: Flattener, state: dict, node: Any) -> None:
    leaves = fl.context.setdefault(LEAVES, {})
    items = node.get("dict") if isinstance(node, dict) else None
    for (_, value), item in zip(state.items(), items or ()):
        ref = item[1] if isinstance(item, list) and len(item) == 2 else None
        if isinstance(ref, dict) and isinstance(ref.get("tensor"), str):
            leaves.setdefault(id(value), ref["tensor"])


def _config_text(fl: Flattener, obj: Any, path: tuple) -> str:
    try:
        return json.dumps(keras.saving.serialize_keras_object(obj), allow_nan=True)
    except (TypeError, ValueError, NotImplementedError) as exc:
        raise UnsupportedObjectError(
            f"cannot save {format_path(path)}: Keras cannot serialize "
            f"the {type(obj).__name__} ({exc}); give the class a get_config() and register it with "
            "keras.saving.register_keras_serializable, or save model.weights / ms.load_into instead",
            key=format_path(path),
        ) from exc


def _config(un: Unflattener, node: dict) -> Any:
    text = node.get("config")
    if not isinstance(text, str) or len(text) > MAX_CONFIG_CHARS:
        raise un.bad(node, "a Keras object needs its config as a JSON string")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise un.bad(node, f"its Keras config is not JSON ({exc})") from None


def _shape_dtype(value: Any) -> tuple[tuple[int, ...], str]:
    return tuple(int(d) for d in value.shape), str(getattr(value.dtype, "name", value.dtype))


def assign_variables(where: str, source: Any, target: dict[str, Any], state: dict) -> None:
    """Assign ``state`` to ``target`` (both keyed alike) after checking every key, shape and dtype."""
    from ...load_into import LoadReport, Mismatch

    report = LoadReport()
    report.missing.extend(k for k in target if k not in state)
    report.unexpected.extend(k for k in state if k not in target)
    for key, var in target.items():
        if key in state:
            saved = state[key]
            if not hasattr(saved, "shape") or _shape_dtype(saved) != _shape_dtype(var):
                got = _shape_dtype(saved) if hasattr(saved, "shape") else ((), type(saved).__name__)
                report.mismatched.append(Mismatch(key, got[0], got[1], *_shape_dtype(var)))
    if not report.ok:
        raise IncompatibleStateError(
            f"{source}: {where}: the Keras config builds a model whose variables do not match the file "
            f"({report.describe()}); build the model yourself and use ms.load_into(model, path, strict=False)",
            path=source, key=where, report=report,
        )
    for key, var in target.items():
        var.assign(state[key])


class LayerCodec:
    """keras.Model and keras.layers.Layer (Sequential, functional, subclassed)."""

    kinds = ("keras.layer",)

    def handles(self, tp: type) -> bool:
        return issubclass(tp, keras.layers.Layer)

    def encode(self, fl: Flattener, layer: Any, path: tuple) -> dict:
        def body(node: dict) -> None:
            node["config"] = _config_text(fl, layer, path)
            state = variables_of(layer)
            node["state"] = fl.encode(state, path)
            _note_leaves(fl, state, node["state"])

        return encode_object(fl, layer, path, "keras.layer", body)

    def decode(self, un: Unflattener, node: dict) -> Any:
        layer = deserialize(_config(un, node), un.source, un.trusted)
        if not isinstance(layer, keras.layers.Layer):
            raise CorruptCheckpointError(f"{un.source}: {node.get('path')}: the config built a {type(layer).__name__}, "
                                         "not a Keras layer", path=un.source)
        state = un.decode(node.get("state"))
        if not isinstance(state, dict):
            raise un.bad(node, "a Keras layer's state must be a dict")
        target = variables_of(layer)
        assign_variables(str(node.get("path")), un.source, target, state)
        loaded = un.context.setdefault(LOADED, {})
        items = node["state"].get("dict") if isinstance(node["state"], dict) else None
        for item in items or ():
            ref = item[1] if isinstance(item, list) and len(item) == 2 else None
            if isinstance(ref, dict) and isinstance(ref.get("tensor"), str) and item[0] in target:
                loaded[ref["tensor"]] = target[item[0]]
        return layer


class OptimizerCodec:
    kinds = ("keras.optimizer",)

    def handles(self, tp: type) -> bool:
        return issubclass(tp, keras.optimizers.Optimizer)

    def encode(self, fl: Flattener, opt: Any, path: tuple) -> dict:
        def body(node: dict) -> None:
            node["config"] = _config_text(fl, opt, path)
            node["state"] = fl.encode(list(opt.variables), path + ("state",))
            node["params"] = None  # filled once every model in the tree is known

            def refs() -> None:
                leaves = fl.context.get(LEAVES, {})
                # which variables the optimizer was built for: Keras keeps that list private
                built_for = list(getattr(opt, "_trainable_variables", None) or [])
                missing = [v.path for v in built_for if id(v) not in leaves]
                if missing:
                    raise UnsupportedObjectError(
                        f"cannot save the Keras optimizer at {format_path(path)}: it was built for variables of a model that is not "
                        f"saved with it ({', '.join(missing[:3])}); save {{'model': model, 'optimizer': optimizer}} "
                        "together, or save the optimizer's variables and restore them with ms.load_into",
                    )
                node["params"] = [{"tensor": leaves[id(v)]} for v in built_for]

            fl.defer(refs)

        return encode_object(fl, opt, path, "keras.optimizer", body)

    def decode(self, un: Unflattener, node: dict) -> Any:
        opt = deserialize(_config(un, node), un.source, un.trusted)
        if not isinstance(opt, keras.optimizers.Optimizer):
            raise CorruptCheckpointError(f"{un.source}: {node.get('path')}: the config built a {type(opt).__name__}, "
                                         "not a Keras optimizer", path=un.source)
        params = node.get("params")
        if not isinstance(params, list) or not all(isinstance(p, dict) and isinstance(p.get("tensor"), str) for p in params):
            raise un.bad(node, "optimizer params must be a list of tensor references")
        loaded = un.context.get(LOADED, {})
        if any(p["tensor"] not in loaded for p in params):
            raise CorruptCheckpointError(
                f"{un.source}: the Keras optimizer at {node.get('path')} refers to model variables that no model "
                "before it in the file holds; load the model and optimizer together (the model first)",
                path=un.source,
            )
        if params:
            opt.build([loaded[p["tensor"]] for p in params])
        saved = un.decode(node.get("state"))
        if not isinstance(saved, list):
            raise un.bad(node, "optimizer state must be a list of its variables")
        assign_variables(str(node.get("path")), un.source, optimizer_state(opt), optimizer_state(saved))
        return opt


def optimizer_state(opt: Any) -> dict[str, Any]:
    """An optimizer's variables (or a saved list of them) keyed by position, as Keras' weights files key them."""
    variables = opt if isinstance(opt, list) else opt.variables
    return {str(i): v for i, v in enumerate(variables)}


CODECS = [LayerCodec(), OptimizerCodec()]
