"""The Stateful protocol: objects with ``state_dict()`` / ``load_state_dict()`` saved by their state.

Data loaders (torchdata's ``StatefulDataLoader``), samplers, metrics and user classes
that nothing else handles (no tensor adapter, no framework codec) are stored as one
object node whose ``state`` is their ``state_dict()``::

    {"object": "stateful", "id": 2, "class": "torchdata...:StatefulDataLoader", "path": "obj['loader']",
     "state": <tree node>, "recipe": <only for @ms.rebuildable / ms.build objects>}

``class`` is for display only: nothing resolves it.  ``ms.load`` gives back the state
dict, or, when the object has a recipe that resolves through the registry, the rebuilt
object with its state loaded.  ``ms.load_into`` (and ``Checkpoints.load_into``) calls the
target's ``load_state_dict`` with the saved state, so a data loader resumed mid-epoch
yields the next batch, not the first.

>>> import os, tempfile, modelsafe as ms
>>> class Counter:
...     def __init__(self): self.n = 0
...     def state_dict(self): return {"n": self.n}
...     def load_state_dict(self, state): self.n = state["n"]
>>> c = Counter(); c.n = 7
>>> p = os.path.join(tempfile.mkdtemp(), "c.safetensors")
>>> ms.save({"counter": c}, p)
>>> ms.load(p)
{'counter': {'n': 7}}
>>> fresh = {"counter": Counter()}
>>> _ = ms.load_into(fresh, p); fresh["counter"].n
7
"""

from __future__ import annotations

from typing import Any

from .adapters import adapter_for_type
from .adapters.protocol import TargetDefaults
from .objects import codec_for_type, decode_recipe, encode_object, encode_recipe, register_fallback_codec
from .recipes import qualified_name, recipe_of
from .tree import Flattener, Unflattener

__all__ = ["is_stateful", "StatefulCodec", "StatefulTarget", "STATEFUL", "STATEFUL_TARGET"]

KIND = "stateful"


def is_stateful(tp: type) -> bool:
    """True for classes with callable ``state_dict`` and ``load_state_dict`` (looked up on the class, not
    the instance, so an attribute a file or a user sets on one object never makes it Stateful)."""
    return (
        isinstance(tp, type)
        and not issubclass(tp, type)
        and callable(getattr(tp, "state_dict", None))
        and callable(getattr(tp, "load_state_dict", None))
        and adapter_for_type(tp) is None  # a tensor type is never saved by "state"
    )


class StatefulCodec:
    """Objects of the Stateful protocol: their ``state_dict()``, and their recipe when they have one."""

    kinds = (KIND,)

    def handles(self, tp: type) -> bool:
        return is_stateful(tp)

    def encode(self, fl: Flattener, obj: Any, path: tuple) -> dict:
        recipe = recipe_of(obj)

        def body(node: dict) -> None:
            if recipe is not None:
                node["recipe"] = encode_recipe(fl, recipe, path, qualified_name(type(obj)))
            node["state"] = fl.encode(obj.state_dict(), path)

        return encode_object(fl, obj, path, KIND, body)

    def decode(self, un: Unflattener, node: dict) -> Any:
        if "state" not in node:
            raise un.bad(node, "a stateful object needs its state")
        state = un.decode(node["state"])
        if node.get("recipe") is None:
            return state  # no class is ever resolved from "class": the state is what comes back
        obj = decode_recipe(un, node["recipe"], class_hint=node.get("class"), kind=_STATEFUL_CLASS)
        obj.load_state_dict(state)
        return obj


def _saved_by_state(target: Any) -> bool:
    """A recipe in a stateful node must name a class this codec handles (not a module or optimizer)."""
    return isinstance(target, type) and codec_for_type(target) is STATEFUL


_STATEFUL_CLASS = (_saved_by_state, "a class of the Stateful protocol (not a framework object)")


class StatefulTarget(TargetDefaults):
    """``ms.load_into``'s target for Stateful objects: the saved state, handed to ``load_state_dict``."""

    plan = "state"
    saved_kinds = (KIND,)
    framework = None  # tensors in the state come back as they were saved
    # conform (inherited) passes the state on: the object's own load_state_dict judges it; a refusal
    # becomes IncompatibleStateError

    def handles(self, obj: Any) -> bool:
        return is_stateful(type(obj))

    def assign(self, obj: Any, value: Any) -> None:
        obj.load_state_dict(value)


STATEFUL = StatefulCodec()
STATEFUL_TARGET = StatefulTarget()
register_fallback_codec(STATEFUL)
