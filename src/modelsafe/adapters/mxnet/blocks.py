"""Gluon Blocks: stored as a recipe plus their parameters, rebuilt by ``ms.load``.

A Block node holds the block's recipe (``ms.build`` / ``@ms.rebuildable``) and its
parameters under their structured names, the names ``save_parameters`` writes
(``"features.0.weight"``).  ``nn.Sequential`` / ``nn.HybridSequential`` need no recipe
of their own (without one, the plain constructor's): their children (each with a
recipe, or a Sequential again) are stored in order and added back.  Without a recipe ``ms.load`` refuses the block and names
``ms.load_into``.

Security: a recipe resolves only through the registry (the built-in ``gluon.nn``
layers, decorated classes) or ``trusted=``.  Building a Gluon block allocates no
parameter memory (``initialize`` does), and parameters are then set from the
file's arrays only, each checked against the block's declared shape and dtype:
memory stays bounded by the file.
"""

from __future__ import annotations

from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon

from ...errors import IncompatibleStateError, MissingRecipeError, UnsupportedObjectError
from ...objects import decode_recipe, encode_object, encode_recipe, in_recipe, resolve_recipe
from ...recipes import qualified_name, recipe_of, register, registered_name
from ...tree import Flattener, Unflattener, format_path

KIND = "mxnet.block"
_CONTAINERS = (gluon.nn.Sequential, gluon.nn.HybridSequential)
# layers whose constructor takes functions or prebuilt symbols: never rebuilt from a file
_NOT_BUILTIN = {"Lambda", "HybridLambda", "SymbolBlock", "Block", "HybridBlock"}


def register_builtins() -> None:
    """Register every ``gluon.nn`` layer (and ``gluon.rnn`` cell and layer) as ``mxnet.gluon.nn.<Name>``."""
    for module, prefix in ((gluon.nn, "mxnet.gluon.nn"), (gluon.rnn, "mxnet.gluon.rnn")):
        for name, obj in vars(module).items():
            if isinstance(obj, type) and issubclass(obj, gluon.Block) and not name.startswith("_") and name not in _NOT_BUILTIN:
                register(obj, name=f"{prefix}.{name}")


def _label(block: gluon.Block) -> str:
    return registered_name(type(block)) or qualified_name(type(block))


def named_parameters(block: gluon.Block) -> dict[str, gluon.Parameter]:
    """Structured name -> Parameter, as ``save_parameters`` names them ("0.weight", "encoder.bias")."""
    # Block._collect_params_with_prefix is what save_parameters / load_parameters use; there is no public twin
    return dict(block._collect_params_with_prefix())


def parameter_arrays(block: gluon.Block, path: tuple = ()) -> dict[str, mx.nd.NDArray]:
    """Structured name -> the parameter's array; a parameter not yet initialized is an error saying what to do."""
    out = {}
    for name, param in named_parameters(block).items():
        try:
            out[name] = param.data()
        except (RuntimeError, mx.MXNetError, gluon.parameter.DeferredInitializationError) as exc:
            raise UnsupportedObjectError(
                f"cannot save {format_path(path)}: parameter {name!r} of {_label(block)} holds no data yet ({exc}); "
                "call net.initialize() and run one forward pass (deferred shapes) before saving",
                key=format_path(path),
            ) from None
    return out


def _spec(fl: Flattener, block: gluon.Block, path: tuple) -> dict | str:
    """``{"recipe": ...}``, plus ``"children"`` for a Sequential; a string says why there is none."""
    recipe = recipe_of(block)
    if type(block) in _CONTAINERS:  # its children are added after it is built: a recipe of its own misses them
        children = []
        for i, child in enumerate(block):
            sub = _spec(fl, child, path + (i,))
            if isinstance(sub, str):
                return sub
            children.append(sub)
        own = {"name": _CONTAINER_LABELS[type(block)], "args": [], "kwargs": []}
        return {"recipe": own if recipe is None else encode_recipe(fl, recipe, path, _label(block)), "children": children}
    if recipe is not None:
        return {"recipe": encode_recipe(fl, recipe, path, _label(block))}
    return f"{_label(block)} was not made with ms.build or an @ms.rebuildable class"


class BlockCodec:
    kinds = (KIND,)

    def handles(self, tp: type) -> bool:
        return issubclass(tp, gluon.Block)

    def encode(self, fl: Flattener, block: gluon.Block, path: tuple) -> dict:
        spec = _spec(fl, block, path)
        if in_recipe(fl):
            if isinstance(spec, str):
                raise UnsupportedObjectError(f"the block {_label(block)} has no recipe: {spec}", key=format_path(path))
            return encode_object(fl, block, path, KIND, lambda node: node.update(spec), with_state=False)

        def body(node: dict) -> None:
            if isinstance(spec, str):
                node["recipe"], node["why"] = None, spec
            else:
                node.update(spec)
            node["state"] = fl.encode(parameter_arrays(block, path), path)

        return encode_object(fl, block, path, KIND, body)

    def decode(self, un: Unflattener, node: dict) -> gluon.Block:
        if node.get("recipe") is None:
            raise _no_recipe(un, node)
        _check_spec(un, node, 0)  # every class resolves before anything is built
        state = un.decode(node["state"]) if "state" in node else None
        if state is not None and not isinstance(state, dict):
            raise un.bad(node, "block state must be a dict")
        block = _build(un, node, 0)
        if state is not None:
            load_block_state(block, state, where=f"{un.source}: {node.get('path')}", strict=True)
        return block


_MAX_DEPTH = 32


def _check_spec(un: Unflattener, spec: Any, depth: int) -> None:
    if depth > _MAX_DEPTH or not isinstance(spec, dict):
        raise un.bad(spec, "a block is a recipe, and a Sequential also a list of children")
    target = resolve_recipe(un, spec.get("recipe"), class_hint=spec.get("class"), kind=BLOCK_KIND)
    if "children" not in spec:
        return
    if target not in _CONTAINERS or not isinstance(spec["children"], list):
        raise un.bad(spec, "only nn.Sequential and nn.HybridSequential hold a list of children")
    for child in spec["children"]:
        _check_spec(un, child, depth + 1)


def _build(un: Unflattener, spec: dict, depth: int) -> gluon.Block:
    block = decode_recipe(un, spec["recipe"], class_hint=spec.get("class"), kind=BLOCK_KIND)
    for child in spec.get("children", ()):
        block.add(_build(un, child, depth + 1))
    return block


def _is_block_class(target: Any) -> bool:
    return issubclass(target, gluon.Block) if isinstance(target, type) else callable(target)


BLOCK_KIND = (_is_block_class, "a Gluon block class")
_CONTAINER_LABELS = {gluon.nn.Sequential: "mxnet.gluon.nn.Sequential", gluon.nn.HybridSequential: "mxnet.gluon.nn.HybridSequential"}


def _no_recipe(un: Unflattener, node: dict) -> MissingRecipeError:
    where = node.get("path", "a block")
    return MissingRecipeError(
        f"{un.source}: {where} is a Gluon block ({node.get('class')}) saved without a recipe, so ms.load cannot "
        f"rebuild it ({node.get('why') or 'no recipe'}). Create it with ms.build(cls, ...) or decorate its class "
        "with @ms.rebuildable before saving; to restore these parameters into a block you construct yourself, "
        "use ms.load_into(block, path)",
        path=un.source, key=str(where),
    )


def load_block_state(block: gluon.Block, state: dict, *, where: str, strict: bool) -> list[str]:
    """Set ``block``'s parameters from ``{structured name: array}``; returns the names set.

    Every key is checked first (shape against the declared shape, where known, and
    dtype), so nothing is set when one does not fit.
    """
    from ...load_into import LoadReport, Mismatch

    params = named_parameters(block)
    report = LoadReport()
    for name, param in params.items():
        if name not in state:
            report.missing.append(name)
            continue
        saved = as_mxnet(state[name])
        if not _fits(param, saved):
            report.mismatched.append(Mismatch(name, tuple(saved.shape), str(np.dtype(saved.dtype)), param.shape,
                                              str(np.dtype(param.dtype))))
    report.unexpected.extend(k for k in state if k not in params)
    if report.mismatched or (strict and not report.ok):
        raise IncompatibleStateError(
            f"{where}: the block's parameters do not match the file ({report.describe()}); build the block the "
            "file was saved from, or load what matches with ms.load_into(block, path, strict=False)",
            key=where, report=report,
        )
    done = []
    for name, param in params.items():
        if name in state:
            # Parameter._load_init is what load_parameters calls: it sets data and ends deferred initialization
            param._load_init(as_mxnet(state[name]), None)  # None: the contexts it has, or those it was initialized for
            done.append(name)
    return done


def _fits(param: gluon.Parameter, saved: mx.nd.NDArray) -> bool:
    declared = param.shape
    if declared and (len(declared) != len(saved.shape) or any(d not in (0, -1) and d != s for d, s in zip(declared, saved.shape))):
        return False  # 0 in a declared shape is a dimension Gluon infers at the first forward pass
    return np.dtype(param.dtype) == np.dtype(saved.dtype)


def as_mxnet(value: Any) -> mx.nd.NDArray:
    """``value`` as an MXNet array (a file loaded with framework="numpy" gives numpy arrays)."""
    numpy_mode = mx.util.is_np_array()  # under npx.set_np() parameters hold mx.np arrays
    if not isinstance(value, mx.nd.NDArray):
        arr = np.asarray(value)
        with mx.util.np_shape(True):
            value = mx.nd.array(arr, dtype=arr.dtype)
    if numpy_mode and not isinstance(value, mx.np.ndarray):
        return value.as_np_ndarray()
    if not numpy_mode and isinstance(value, mx.np.ndarray):
        return value.as_nd_ndarray()
    return value


CODECS = [BlockCodec()]
