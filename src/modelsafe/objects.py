"""Framework objects in the tree: modules, optimizers, schedulers, RNG states, rebuildables.

An object that is more than a container of tensors is stored as one skeleton node::

    {"object": "<kind>", "id": 3, "class": "pkg.mod:Net", "path": "obj[\\"model\\"]",
     "recipe": {"name": "pkg.Net", "args": [...], "kwargs": [["width", 64]]},
     "state": <ordinary tree node; its tensors are ordinary, checksummed leaves>}

The codecs of each framework are in its :class:`~modelsafe.adapters.protocol.Framework`
record, found lazily by the top-level module of the object's type (like tensor
adapters) or by the prefix of a node's kind, so ``import modelsafe`` imports no
framework.  An object reached twice in one tree (an optimizer saved beside the
scheduler that holds it) is stored once; later occurrences are
``{"object_ref": id}`` and come back as the same object.

Classes named in a file are found only through :mod:`modelsafe.recipes`
(registry or ``trusted=`` modules); nothing here imports a module a file names.
"""

from __future__ import annotations

import inspect
from collections import Counter
from typing import Any, Callable, Iterable, Protocol

from .adapters import framework_for_kind, frameworks_for_type
from .errors import CorruptCheckpointError, FrameworkNotInstalledError, ModelsafeError, UnknownClassError, UnsupportedObjectError
from .recipes import (
    Recipe,
    _trust_advice,
    attach_recipe,
    ensure_builtins,
    generation,
    is_built_type,
    lookup,
    qualified_name,
    recipe_of,
    registered_name,
    resolve,
)
from .tree import Flattener, Unflattener, _decode_key, _dict_items, format_path, register_decoder, register_encoder

__all__ = [
    "ObjectCodec",
    "register_fallback_codec",
    "codec_for_type",
    "encode_object",
    "encode_recipe",
    "decode_recipe",
    "in_recipe",
]


class ObjectCodec(Protocol):
    """How one kind of framework object becomes a skeleton node and back."""

    kinds: tuple[str, ...]  # the "object" tags this codec decodes

    def handles(self, tp: type) -> bool: ...
    def encode(self, fl: Flattener, obj: Any, path: tuple) -> dict: ...
    def decode(self, un: Unflattener, node: dict) -> Any: ...


# modelsafe's own codecs (python.random, modelsafe.rng_state), given to install(); framework
# codecs come from Framework records
_CORE_CODECS: list[ObjectCodec] = []
_by_type: dict[type, ObjectCodec | None] = {}
_by_type_generation = -1   # recipes.generation() when _by_type was filled
_by_kind: dict[str, ObjectCodec] = {}
# codecs for objects no framework claims (the Stateful protocol), tried before plain recipes
_FALLBACKS: list[ObjectCodec] = []


def _core_codecs() -> list[ObjectCodec]:
    return list(_CORE_CODECS)


def _framework_codecs(framework: Any) -> Iterable[ObjectCodec]:
    if framework.codecs:
        ensure_builtins(framework)  # a codec names classes by their registered names
    return framework.codecs


def register_fallback_codec(codec: ObjectCodec) -> None:
    """Register a codec tried for types no framework codec handles (before plain ``@ms.rebuildable``)."""
    if codec not in _FALLBACKS:
        _FALLBACKS.append(codec)
    _by_type.clear()  # its kinds are found by _codec_for_kind, whenever it was registered



def codec_for_type(tp: type) -> ObjectCodec | None:
    """The codec for objects of type ``tp`` (found by the top-level modules of its MRO), or None."""
    global _by_type_generation
    if _by_type_generation != generation():  # a class was registered or built since: answers may differ
        _by_type.clear()
        _by_type_generation = generation()
    try:
        return _by_type[tp]
    except KeyError:
        pass
    found: ObjectCodec | None = next((c for c in _core_codecs() if c.handles(tp)), None)
    for framework in frameworks_for_type(tp) if found is None else ():
        found = next((c for c in _framework_codecs(framework) if c.handles(tp)), None)
        if found is not None:
            break
    if found is None:
        found = next((c for c in _FALLBACKS if c.handles(tp)), None)
    if found is None and _is_recipe_type(tp):
        found = REBUILDABLE
    _by_type[tp] = found
    return found


def _codec_for_kind(un: Unflattener, node: dict) -> ObjectCodec:
    kind = node.get("object")
    codec = _by_kind.get(kind) if isinstance(kind, str) else None
    if codec is not None:
        return codec
    if kind == REBUILDABLE.kinds[0]:
        return REBUILDABLE
    if isinstance(kind, str):
        codecs = _core_codecs() + _FALLBACKS
        try:
            framework = framework_for_kind(kind)
        except FrameworkNotInstalledError as exc:
            raise FrameworkNotInstalledError(f"{un.source}: holds a {kind} object; {exc}", path=un.source) from exc
        if framework is not None:
            codecs += list(_framework_codecs(framework))
        for c in codecs:
            for k in c.kinds:
                _by_kind.setdefault(k, c)
    codec = _by_kind.get(kind) if isinstance(kind, str) else None
    if codec is None:
        raise CorruptCheckpointError(
            f"{un.source}: the file holds an object of kind {kind!r}, which this modelsafe does not know; "
            "it was written by a newer modelsafe or is damaged (pip install -U modelsafe)",
            path=un.source,
        )
    return codec


# -- per-save state: ids, de-duplication, recipe mode ---------------------------------

class _SaveState:
    def __init__(self) -> None:
        self.next_id = 0
        self.ids: dict[int, tuple[int, dict, bool]] = {}  # id(obj) -> (node id, node, holds its state)
        self.keep: list[Any] = []                    # keep encoded objects alive (stable id())
        self.recipe_depth = 0
        self.finishing = False


def _state(fl: Flattener) -> _SaveState:
    st = fl.context.get("objects")
    if st is None:
        st = fl.context["objects"] = _SaveState()
    return st


def in_recipe(fl: Flattener) -> bool:
    """True while encoding constructor arguments: objects there are stored as recipes only."""
    return _state(fl).recipe_depth > 0


def encode_object(
    fl: Flattener, obj: Any, path: tuple, kind: str, body: Callable[[dict], None], *, with_state: bool = True
) -> dict:
    """A node ``{"object": kind, "id": n, ...}`` filled by ``body``; a repeat becomes ``{"object_ref": n}``."""
    st = _state(fl)
    seen = st.ids.get(id(obj))
    if seen is not None:
        node_id, node, had_state = seen
        if with_state and not had_state:  # first met as a constructor argument: now complete that node
            st.ids[id(obj)] = (node_id, node, True)
            fl.encode_container(obj, path, lambda: body(node))
        _schedule_finish(fl)
        return {"object_ref": node_id}
    node_id = st.next_id
    st.next_id += 1
    node = {"object": kind, "id": node_id, "class": qualified_name(type(obj)), "path": format_path(path)}
    st.ids[id(obj)] = (node_id, node, with_state)
    st.keep.append(obj)
    fl.encode_container(obj, path, lambda: body(node))
    return node


def _schedule_finish(fl: Flattener) -> None:
    st = _state(fl)
    if not st.finishing:
        st.finishing = True
        fl.defer(lambda: _finish(fl))


def _finish(fl: Flattener) -> None:
    """Make the first occurrence of each object in tree order hold its full node (decoding is in order)."""
    if fl._deferred:  # let every other deferred encoder run first
        fl.defer(lambda: _finish(fl))
        return
    full: dict[int, dict] = {}
    first: dict[int, dict] = {}

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for v in node:
                walk(v)
        elif isinstance(node, dict):
            if "object_ref" in node and len(node) == 1:
                first.setdefault(node["object_ref"], node)
                return
            if isinstance(node.get("object"), str) and isinstance(node.get("id"), int):
                full[node["id"]] = node
                first.setdefault(node["id"], node)
            for v in node.values():
                walk(v)

    walk(fl.root)
    for node_id, head in first.items():
        body = full.get(node_id)
        if body is None or head is body:
            continue
        content = dict(body)
        body.clear()
        body["object_ref"] = node_id
        head.clear()
        head.update(content)


def _dec_object_ref(un: Unflattener, node: dict) -> Any:
    memo = un.context.setdefault("objects", {})
    try:
        return memo[node["object_ref"]]
    except (KeyError, TypeError):
        raise un.bad(node, "refers to an object the tree does not define before it") from None


def _dec_object(un: Unflattener, node: dict) -> Any:
    memo = un.context.setdefault("objects", {})
    node_id = node.get("id")
    if node_id is not None and (not isinstance(node_id, int) or isinstance(node_id, bool)):
        raise un.bad(node, "an object id must be an integer")  # (a hostile id may be unhashable)
    if node_id in memo:
        return memo[node_id]
    codec = _codec_for_kind(un, node)
    try:
        obj = codec.decode(un, node)
    except ModelsafeError:
        raise
    except Exception as exc:  # framework code rejecting what a damaged or hostile file holds
        raise CorruptCheckpointError(
            f"{un.source}: the {node.get('object')} at {node.get('path', 'an object node')} cannot be rebuilt: "
            f"{type(exc).__name__}: {exc}",
            path=un.source,
        ) from exc
    if node_id is not None:
        memo[node_id] = obj
    return obj


# -- recipes -----------------------------------------------------------------------------

def _arg_names(target: Any, recipe: Recipe) -> list[str]:
    """Parameter names for each positional argument of ``recipe`` (for error messages)."""
    names: list[str] = []
    try:
        params = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        params = []
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    var = next((p.name for p in params if p.kind == p.VAR_POSITIONAL), "args")
    for i in range(len(recipe.args)):
        names.append(positional[i].name if i < len(positional) else f"*{var}[{i - len(positional)}]")
    return names


def encode_recipe(fl: Flattener, recipe: Recipe, path: tuple, owner: str) -> dict:
    """``{"name", "args", "kwargs"}`` for ``recipe``; an argument that cannot be stored is named in the error."""
    st = _state(fl)
    names = _arg_names(recipe.target, recipe)
    base = path + ("__recipe__",)

    def one(value: Any, arg: str, sub: Any) -> Any:
        try:
            return fl.encode(value, base + (sub,))
        except UnsupportedObjectError as exc:
            raise UnsupportedObjectError(
                f"cannot save {format_path(path)}: constructor argument {arg!r} of {owner} is "
                f"{_describe(value)}, which cannot be stored in a recipe ({exc.message}). Recipe arguments may be "
                "JSON values, tensors, containers of them, @ms.rebuildable objects and registered classes; "
                "pass such a value instead, or save the weights only (model.state_dict()) and restore them "
                "with ms.load_into",
                key=format_path(path),
            ) from None

    st.recipe_depth += 1
    try:
        args = [one(v, names[i], i) for i, v in enumerate(recipe.args)]
        kwargs = [[k, one(v, k, k)] for k, v in recipe.kwargs.items()]
    finally:
        st.recipe_depth -= 1
    return {"name": recipe.name, "args": args, "kwargs": kwargs}


def _describe(value: Any) -> str:
    tp = type(value)
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{text} ({tp.__module__}.{tp.__qualname__})"


def _resolve_target(un: Unflattener, name: str, class_hint: Any) -> Any:
    """``resolve(name)``; if the stable name is unknown but the saved class lives in a trusted module,
    import that module (its decorators register the stable name) and look again."""
    try:
        return resolve(name, un.trusted, source=un.source)
    except UnknownClassError as exc:
        if not isinstance(class_hint, str):
            raise
        if un.trusted:
            try:
                resolve(class_hint, un.trusted, source=un.source)  # imports only a trusted module
            except UnknownClassError:
                pass
            found = lookup(name)
            if found is not None:
                return found
        raise UnknownClassError(
            f"{un.source}: the file names class {name!r} (saved from {class_hint}), which is not registered here. "
            "Nothing was imported or called. Import the module that defines it before loading (its "
            "@ms.rebuildable registers it), register the class with ms.register (with aliases=(...) if it moved), "
            + _trust_advice(class_hint),
            path=un.source, key=name,
        ) from exc


def resolve_recipe(un: Unflattener, rnode: Any, *, class_hint: Any = None, kind: Any = None) -> Any:
    """The class or factory a recipe names (registry or ``trusted=`` only); nothing is called.

    ``kind`` is ``(test, what)``: the target must pass ``test`` for the node it sits in
    (an optimizer node names an optimizer class), so a file cannot route a class
    around the codec that bounds it (a ``torch.nn.Linear`` built for real as a scheduler).
    """
    if not (isinstance(rnode, dict) and isinstance(rnode.get("name"), str)):
        raise un.bad(rnode, "a recipe needs a class name")
    target = _resolve_target(un, rnode["name"], class_hint)
    if kind is not None and not kind[0](target):
        raise CorruptCheckpointError(
            f"{un.source}: the recipe {rnode['name']!r} names {getattr(target, '__qualname__', target)!r} where "
            f"{kind[1]} belongs; the file is damaged or hostile",
            path=un.source, key=rnode["name"],
        )
    return target


def decode_recipe(un: Unflattener, rnode: Any, *, build: bool = True, class_hint: Any = None, kind: Any = None) -> Any:
    """Resolve the recipe's target (registry or ``trusted=`` only), decode its arguments, call it.

    The returned object remembers its recipe, so saving it again keeps it rebuildable.
    ``class_hint`` is the saved object's ``module:qualname``, used only with ``trusted=``;
    ``kind`` as in :func:`resolve_recipe`.
    With ``build=False`` returns ``(target, args, kwargs)`` without calling anything.
    """
    target = resolve_recipe(un, rnode, class_hint=class_hint, kind=kind)  # raises before anything is called
    raw_args, raw_kwargs = rnode.get("args", []), rnode.get("kwargs", [])
    if not isinstance(raw_args, list) or not (
        isinstance(raw_kwargs, list) and all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in raw_kwargs)
    ):
        raise un.bad(rnode, "recipe args must be a list and kwargs [name, value] pairs")
    args = tuple(un.decode(a) for a in raw_args)
    kwargs = {k: un.decode(v) for k, v in raw_kwargs}
    if not build:
        return target, args, kwargs
    return call_recipe(un, rnode["name"], target, args, kwargs)


def call_recipe(un: Unflattener, name: str, target: Any, args: tuple, kwargs: dict) -> Any:
    """``target(*args, **kwargs)``, failures explained; the result remembers its recipe."""
    try:
        obj = target(*args, **kwargs)
    except Exception as exc:
        raise CorruptCheckpointError(
            f"{un.source}: rebuilding {name} from its recipe failed: {type(exc).__name__}: {exc}. "
            "Its constructor may have changed since the file was written; build the object yourself and "
            "restore its state with ms.load_into(obj, path)",
            path=un.source, key=name,
        ) from exc
    remember_recipe(obj, target, args, kwargs)
    return obj


def remember_recipe(obj: Any, target: Any, args: tuple, kwargs: dict) -> None:
    """Let ``obj``, built by ``target(*args, **kwargs)``, keep its recipe (so saving it again keeps it rebuildable)."""
    if recipe_of(obj) is None:
        try:
            attach_recipe(obj, Recipe(target, args, kwargs))
        except TypeError:
            pass


# -- registered classes and functions as values (e.g. activation=nn.GELU) --------------

def _dec_ref(un: Unflattener, node: dict) -> Any:
    name = node.get("ref")
    if not isinstance(name, str):
        raise un.bad(node, "a class reference needs a name")
    return resolve(name, un.trusted, source=un.source)


# -- generic rebuildable objects (decorated classes that are not framework objects) ------

def _is_recipe_type(tp: type) -> bool:
    return registered_name(tp) is not None or is_built_type(tp)


class RebuildableCodec:
    """Any object with a recipe: stored as the recipe and rebuilt by calling it (no other state)."""

    kinds = ("rebuildable",)

    def handles(self, tp: type) -> bool:
        return _is_recipe_type(tp)

    def encode(self, fl: Flattener, obj: Any, path: tuple) -> dict:
        recipe = recipe_of(obj)
        if recipe is None:
            if fl.allow_pickle:
                return fl.unsupported(obj, path)
            raise UnsupportedObjectError(
                f"cannot save {format_path(path)}: {qualified_name(type(obj))} is registered, but this instance has no "
                "recipe (it was not made by a @ms.rebuildable class or with ms.build); create it with "
                "ms.build(cls, ...) or decorate the class with @ms.rebuildable",
                key=format_path(path),
            )

        def body(node: dict) -> None:
            node["recipe"] = encode_recipe(fl, recipe, path, qualified_name(type(obj)))

        return encode_object(fl, obj, path, "rebuildable", body)

    def decode(self, un: Unflattener, node: dict) -> Any:
        return decode_recipe(un, node.get("recipe"), class_hint=node.get("class"), kind=_PLAIN_REBUILDABLE)


def _no_codec_of_its_own(target: Any) -> bool:
    """A class with a framework codec (a torch module, optimizer) is rebuilt only through that codec."""
    return not isinstance(target, type) or codec_for_type(target) in (None, REBUILDABLE)


_PLAIN_REBUILDABLE = (_no_codec_of_its_own, "a plain rebuildable class (not a framework object)")
REBUILDABLE = RebuildableCodec()


# -- wiring into the tree ------------------------------------------------------------------

def _handles(tp: type) -> bool:
    return codec_for_type(tp) is not None or _is_class_value(tp)


def _is_class_value(tp: type) -> bool:
    return isinstance(tp, type) and (issubclass(tp, type) or tp.__name__ in ("function", "builtin_function_or_method"))


def _encode(fl: Flattener, obj: Any, path: tuple) -> Any:
    if _is_class_value(type(obj)):
        name = registered_name(obj)
        if name is None and getattr(obj, "__module__", None) and lookup(qualified_name(obj)) is obj:
            name = registered_name(obj)  # a built-in registered lazily (torch.nn.GELU)
        if name is None:
            return fl.unsupported(obj, path)
        return {"ref": name}
    codec = codec_for_type(type(obj))
    if codec is None:
        return fl.unsupported(obj, path)
    return codec.encode(fl, obj, path)


def _enc_counter(fl: Flattener, obj: Counter, path: tuple) -> Any:
    return fl.encode_container(obj, path, lambda: {"counter": _dict_items(fl, obj, path)})


def _dec_counter(un: Unflattener, node: dict) -> Counter:
    items = node["counter"]
    if not isinstance(items, list) or not all(isinstance(p, list) and len(p) == 2 for p in items):
        raise un.bad(node, "counter items must be [key, count] pairs")
    return Counter({_decode_key(un, k): un.decode(v) for k, v in items})  # keys checked hashable


_installed = False


def install(codecs: Iterable[ObjectCodec] = ()) -> None:
    """Teach the tree about objects: Counter, framework objects, rebuildables, class references.

    Called once by the package (``modelsafe/__init__.py``) with modelsafe's own codecs
    (:mod:`modelsafe.rng`); framework codecs are found through the adapters registry.
    A second call only adds ``codecs``.
    """
    global _installed
    for codec in codecs:
        if codec not in _CORE_CODECS:
            _CORE_CODECS.append(codec)
    _by_type.clear()
    _by_kind.clear()
    if _installed:
        return
    _installed = True
    register_encoder(Counter, _enc_counter)
    register_decoder("counter", _dec_counter)
    register_encoder(_handles, _encode)
    register_decoder("object", _dec_object)
    register_decoder("object_ref", _dec_object_ref)
    register_decoder("ref", _dec_ref)
