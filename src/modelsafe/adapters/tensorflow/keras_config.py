"""Keras configs read from a file, checked before Keras sees them.

A Keras config names classes and functions (``{"module": ..., "class_name": ...,
"registered_name": ...}``) and may hold a Lambda's bytecode.  Keras itself would
import ``keras.*`` modules a file names and, with ``safe_mode=False``, run bytecode.
So every object a config names is resolved here first, through modelsafe's registry
(Keras' built-in layers, models, optimizers, initializers... registered as
``keras.layers.Dense`` and so on), Keras' own registry of classes the *program*
registered (``keras.saving.register_keras_serializable``) or ``trusted=`` modules;
anything else is refused before any Keras code runs.  Keras then gets exactly those
classes as ``custom_objects`` and ``safe_mode=True`` unless the caller trusts Lambdas.
"""

from __future__ import annotations

from typing import Any, Iterable

import keras

from ...errors import UnknownClassError, UnsafeObjectError
from ...recipes import lookup, resolve

# markers of values (not classes) in Keras configs; Keras decodes them as data
_DATA = {"__tensor__", "__numpy__", "__bytes__", "__slice__", "__ellipsis__", "__keras_tensor__", "__typespec__"}
LAMBDA_TRUST = "keras.layers.Lambda"  # trusted=[...] entry that lets Lambda layers run their code
# public Keras namespaces whose plain functions a config may name ("activation": "relu" and friends)
_FUNCTION_MODULES = ("activations", "losses", "metrics", "ops")
_MAX_DEPTH = 200


def _function(name: Any, module: Any) -> Any:
    """The built-in Keras function ``name`` in a public namespace, or None."""
    if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
        return None
    spaces = _FUNCTION_MODULES if module in (None, "builtins") else (
        (str(module).removeprefix("keras."),) if str(module).removeprefix("keras.") in _FUNCTION_MODULES else ()
    )
    for space in spaces:
        found = vars(getattr(keras, space)).get(name)
        if callable(found) and not isinstance(found, type):
            return found
    return None


class _Checker:
    def __init__(self, source: Any, trusted: Iterable[str]) -> None:
        self.source, self.trusted = source, tuple(trusted)
        self.custom: dict[str, Any] = {}
        self.lambdas = LAMBDA_TRUST in self.trusted

    def bad(self, what: str) -> UnknownClassError:
        return UnknownClassError(
            f"{self.source}: the Keras config names {what}, which is neither a Keras built-in, registered with "
            "keras.saving.register_keras_serializable or ms.register, nor in a trusted= module. Nothing was "
            "imported or called; import and register the class before loading",
            path=self.source, key=what,
        )

    def walk(self, node: Any, depth: int = 0) -> None:
        if depth > _MAX_DEPTH:
            raise self.bad("a config nested too deeply")
        if isinstance(node, list):
            for item in node:
                self.walk(item, depth + 1)
            return
        if not isinstance(node, dict):
            return
        if "class_name" in node:
            self.check_object(node)
        for value in node.values():
            self.walk(value, depth + 1)

    def check_object(self, node: dict) -> None:
        name, module, registered = node.get("class_name"), node.get("module"), node.get("registered_name")
        if name in _DATA:
            return
        if name == "__lambda__":
            if not self.lambdas:
                raise UnsafeObjectError(
                    f"{self.source}: the file holds a Keras Lambda layer, whose Python bytecode would run on load; "
                    f"it is refused. If you trust this file, pass trusted=[{LAMBDA_TRUST!r}]; better, replace the "
                    "Lambda by a registered layer class",
                    path=self.source,
                )
            return
        if name == "function":
            self.check_function(node.get("config"), module, registered)
            return
        if not isinstance(name, str) or not (module is None or isinstance(module, str)) or not (
            registered is None or isinstance(registered, str)
        ):
            raise self.bad(repr(name)[:80])
        self.custom[registered or name] = self.resolve_class(name, module, registered)

    def check_function(self, fn: Any, module: Any, registered: Any) -> None:
        key = registered if isinstance(registered, str) else fn
        if isinstance(key, str) and keras.saving.get_registered_object(key) is not None:
            return
        found = _function(fn, module)
        if found is None:
            raise self.bad(f"function {fn!r} of {module!r}")
        self.custom[fn] = found

    def resolve_class(self, name: str, module: str | None, registered: str | None) -> Any:
        if registered:
            found = keras.saving.get_registered_object(registered)
            if isinstance(found, type):
                return found  # the program registered it with Keras
        if module and (module == "keras" or module.startswith("keras.")):
            found = lookup(f"{module}.{name}") or lookup(f"{module}:{name}")  # public name, or where it is defined
            if found is not None:
                return found
            raise self.bad(f"{module}.{name}")
        for candidate in filter(None, (registered, module and f"{module}:{name}")):
            found = lookup(candidate)
            if found is not None:
                return found
        if module:
            try:
                return resolve(f"{module}:{name}", self.trusted, source=self.source)  # trusted= modules only
            except UnknownClassError:
                pass
        raise self.bad(f"{module}.{name}" if module else repr(name))


def checked_custom_objects(config: Any, source: Any, trusted: Iterable[str]) -> tuple[dict[str, Any], bool]:
    """Every class/function ``config`` names, resolved safely, and whether Lambdas may run.

    Raises UnknownClassError (a name nothing resolves) or UnsafeObjectError (a Lambda, untrusted).
    """
    checker = _Checker(source, trusted)
    checker.walk(config)
    return checker.custom, checker.lambdas


def deserialize(config: Any, source: Any, trusted: Iterable[str]) -> Any:
    """``keras.saving.deserialize_keras_object(config)`` after :func:`checked_custom_objects`."""
    custom, lambdas = checked_custom_objects(config, source, trusted)
    return keras.saving.deserialize_keras_object(config, custom_objects=custom, safe_mode=not lambdas)
