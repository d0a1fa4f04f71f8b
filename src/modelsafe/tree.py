"""Object tree <-> JSON skeleton plus a list of payloads.

``flatten(obj)`` walks a tree of containers, scalars and tensors and returns a
:class:`~modelsafe.format.plan.FlatState`: a JSON-serialisable *skeleton* in which
every tensor, bytes object or pickled object is replaced by a reference
``{"tensor": name}`` to a :class:`~modelsafe.format.plan.Payload`.  ``unflatten``
does the inverse given the loaded leaves.  Both dispatch through registries keyed by
type (encoding) and by node tag (decoding); see docs/format.md for every node form.

Tensors that are the same memory view (tied weights) become one payload referenced
from several places and come back as one object.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import keyword
import math
import pickle
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .adapters import TensorAdapter, TensorInfo, adapter_for_type
from .errors import CorruptCheckpointError, UnsafeObjectError, UnsupportedObjectError
from .format.plan import NO_ATTRS, FlatState, Payload
from .recipes import qualified_name
from .treepath import Attr, format_path

__all__ = ["Flattener", "Unflattener", "flatten", "format_path", "register_encoder", "register_decoder", "tensor_payload"]

MAX_SAFE_INT = 2**53
ROOT_NAME = "tensor"
RESERVED_NAMES = {"__metadata__"}


Encoder = Callable[["Flattener", Any, tuple], Any]
Decoder = Callable[["Unflattener", dict], Any]
_ENCODERS: dict[type, Encoder] = {}
_DECODERS: dict[str, Decoder] = {}
# Fallback encoders tried in order for types without an exact entry: (predicate, encoder)
_FALLBACKS: list[tuple[Callable[[type], bool], Encoder]] = []


def register_encoder(tp: type | Callable[[type], bool], encoder: Encoder) -> None:
    """Register how objects of exact type ``tp`` (or matching a predicate) become skeleton nodes."""
    if isinstance(tp, type):
        _ENCODERS[tp] = encoder
    else:
        _FALLBACKS.append((tp, encoder))


def register_decoder(tag: str, decoder: Decoder) -> None:
    """Register how skeleton nodes ``{tag: ...}`` become objects again."""
    _DECODERS[tag] = decoder


class Flattener:
    """Turns one object tree into a skeleton and payloads; one instance per save."""

    def __init__(self, *, allow_pickle: bool = False) -> None:
        self.allow_pickle = allow_pickle
        self.payloads: list[Payload] = []
        self.aliases: dict[str, str] = {}
        self._names: set[str] = set()
        self._by_identity: dict[Any, str] = {}
        self._active: set[int] = set()
        self.context: dict = {}  # shared state for object encoders (recipes, cross-references)
        self.root: Any = None
        self._deferred: list[Callable[[], None]] = []

    # -- entry point -------------------------------------------------------
    def flatten(self, obj: Any) -> Any:
        try:
            self.root = self.encode(obj, ())
        except RecursionError:
            raise UnsupportedObjectError(
                "cannot save obj: it is nested too deeply for Python's recursion limit; flatten the structure "
                "(or raise sys.setrecursionlimit) before saving",
                key="obj",
            ) from None
        while self._deferred:  # encoders may finish nodes once the whole tree is known
            self._deferred.pop(0)()
        return self.root

    def defer(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` after the whole tree is encoded (e.g. to refer to objects found later)."""
        self._deferred.append(fn)

    def encode(self, obj: Any, path: tuple) -> Any:
        tp = type(obj)
        encoder = _ENCODERS.get(tp)
        if encoder is not None:
            return encoder(self, obj, path)
        adapter = adapter_for_type(tp)
        if adapter is not None:
            return self.add_tensor(obj, adapter, path)
        for predicate, fallback in _FALLBACKS:
            if predicate(tp):
                return fallback(self, obj, path)
        return self.unsupported(obj, path)

    def encode_container(self, obj: Any, path: tuple, body: Callable[[], Any]) -> Any:
        key = id(obj)
        if key in self._active:
            raise UnsupportedObjectError(
                f"{format_path(path)} contains itself (a reference cycle); break the cycle before saving",
                key=format_path(path),
            )
        self._active.add(key)
        try:
            return body()
        finally:
            self._active.discard(key)

    # -- payloads --------------------------------------------------------------
    def leaf_name(self, path: tuple) -> str:
        base = ".".join(map(str, path)) if path else ROOT_NAME
        name = base
        n = 1
        while name in self._names or name in RESERVED_NAMES:
            n += 1
            name = f"{base}#{n}"
        self._names.add(name)
        return name

    def add_tensor(self, obj: Any, adapter: TensorAdapter, path: tuple) -> dict:
        try:
            info = adapter.describe(obj)
        except UnsupportedObjectError as exc:
            if self.allow_pickle:
                return self.add_pickle(obj, path)
            raise UnsupportedObjectError(
                f"cannot save {format_path(path)} ({_type_name(obj)}): {exc.message}", key=format_path(path)
            ) from None
        if info.identity is not None:
            existing = self._by_identity.get(info.identity)
            if existing is not None:
                alias = self.leaf_name(path)
                self.aliases[alias] = existing
                return {"tensor": existing}
        name = self.leaf_name(path)
        if info.identity is not None:
            self._by_identity[info.identity] = name
        self.payloads.append(tensor_payload(name, obj, adapter, info, path))
        return {"tensor": name}

    def add_bytes(self, data: bytes, path: tuple, kind: str = "bytes") -> str:
        name = self.leaf_name(path)
        self.payloads.append(Payload.of_bytes(name, data, kind=kind, where=path))
        return name

    def add_pickle(self, obj: Any, path: tuple) -> dict:
        try:
            data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        except Exception as exc:
            raise UnsupportedObjectError(
                f"cannot save {format_path(path)} ({_type_name(obj)}): pickling it failed: {exc}",
                key=format_path(path),
            ) from exc
        return {"pickle": self.add_bytes(data, path, kind="pickle"), "type": _type_name(obj)}

    def unsupported(self, obj: Any, path: tuple) -> Any:
        if self.allow_pickle:
            return self.add_pickle(obj, path)
        where = format_path(path)
        raise UnsupportedObjectError(
            f"cannot save {where}: modelsafe does not know how to store {_type_name(obj)}. "
            "Register it (@ms.rebuildable or ms.register), convert it to tensors, containers and JSON "
            "scalars, or pass allow_pickle=True to store it pickled (loading then needs allow_pickle=True too)",
            key=where,
        )


def _type_name(obj: Any) -> str:
    tp = type(obj)
    return f"{tp.__module__}.{tp.__qualname__}"


# -- encoders for the builtin containers and scalars -----------------------------

def _enc_raw(fl: Flattener, obj: Any, path: tuple) -> Any:
    return obj


def _enc_int(fl: Flattener, obj: int, path: tuple) -> Any:
    return obj if -MAX_SAFE_INT <= obj <= MAX_SAFE_INT else {"int": str(obj)}


def _enc_float(fl: Flattener, obj: float, path: tuple) -> Any:
    if math.isfinite(obj):
        return {"float": obj}
    return {"float": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}


def _enc_list(fl: Flattener, obj: list, path: tuple) -> Any:
    return fl.encode_container(obj, path, lambda: [fl.encode(v, path + (i,)) for i, v in enumerate(obj)])


def _enc_tuple(fl: Flattener, obj: tuple, path: tuple) -> Any:
    return fl.encode_container(obj, path, lambda: {"tuple": [fl.encode(v, path + (i,)) for i, v in enumerate(obj)]})


def _enc_key(fl: Flattener, key: Any, path: tuple) -> Any:
    if type(key) in (str, int) and not isinstance(key, bool):
        return _enc_int(fl, key, path) if type(key) is int else key
    if type(key) in (bool, float, tuple, type(None), frozenset):
        before = len(fl.payloads)
        node = fl.encode(key, path)
        if len(fl.payloads) == before:
            return node
    raise UnsupportedObjectError(
        f"cannot save {format_path(path)}: dict key {key!r} of type {type(key).__name__} is not storable; "
        "use str, int, float, bool, None or tuples of them as keys",
        key=format_path(path),
    )


def _dict_items(fl: Flattener, obj: dict, path: tuple) -> list:
    return [[_enc_key(fl, k, path), fl.encode(v, path + (k,))] for k, v in obj.items()]


def _enc_dict(fl: Flattener, obj: dict, path: tuple) -> Any:
    return fl.encode_container(obj, path, lambda: {"dict": _dict_items(fl, obj, path)})


def _enc_ordered_dict(fl: Flattener, obj: collections.OrderedDict, path: tuple) -> Any:
    def body():
        node: dict[str, Any] = {"dict": _dict_items(fl, obj, path), "type": "OrderedDict"}
        meta = getattr(obj, "_metadata", None)  # torch state_dict version info
        if meta is not None:
            node["_metadata"] = fl.encode(meta, path + (Attr("_metadata"),))
        return node

    return fl.encode_container(obj, path, body)


def _enc_set(fl: Flattener, obj: Any, path: tuple) -> Any:
    tag = "frozenset" if isinstance(obj, frozenset) else "set"
    return fl.encode_container(obj, path, lambda: {tag: [_enc_key(fl, v, path + (i,)) for i, v in enumerate(obj)]})


def _enc_bytes(fl: Flattener, obj: bytes, path: tuple) -> Any:
    node: dict[str, Any] = {"bytes": fl.add_bytes(bytes(obj), path)}
    if type(obj) is bytearray:
        node["type"] = "bytearray"
    return node


def _is_namedtuple(tp: type) -> bool:
    return issubclass(tp, tuple) and hasattr(tp, "_fields") and hasattr(tp, "_make")


def _enc_namedtuple(fl: Flattener, obj: tuple, path: tuple) -> Any:
    return fl.encode_container(
        obj,
        path,
        lambda: {
            "namedtuple": qualified_name(type(obj)),
            "fields": list(obj._fields),
            "items": [fl.encode(v, path + (i,)) for i, v in enumerate(obj)],
        },
    )


def _is_dataclass(tp: type) -> bool:
    return dataclasses.is_dataclass(tp)


def _enc_dataclass(fl: Flattener, obj: Any, path: tuple) -> Any:
    return fl.encode_container(
        obj,
        path,
        lambda: {
            "dataclass": qualified_name(type(obj)),
            "fields": [[f.name, fl.encode(getattr(obj, f.name), path + (Attr(f.name),))] for f in dataclasses.fields(obj)],
        },
    )


for _tp in (type(None), bool, str):
    register_encoder(_tp, _enc_raw)
register_encoder(int, _enc_int)
register_encoder(float, _enc_float)
register_encoder(list, _enc_list)
register_encoder(tuple, _enc_tuple)
register_encoder(dict, _enc_dict)
register_encoder(collections.OrderedDict, _enc_ordered_dict)
register_encoder(set, _enc_set)
register_encoder(frozenset, _enc_set)
register_encoder(bytes, _enc_bytes)
register_encoder(bytearray, _enc_bytes)
register_encoder(_is_namedtuple, _enc_namedtuple)
register_encoder(_is_dataclass, _enc_dataclass)


def tensor_payload(name: str, obj: Any, adapter: TensorAdapter, info: TensorInfo, where: tuple | str = ()) -> Payload:
    """The payload record of tensor ``obj`` (described by its ``adapter`` as ``info``); its bytes are read when written."""
    return Payload(name, "tensor", info.dtype, tuple(info.shape), adapter.framework, obj, adapter.host_bytes,
                   info.attrs or NO_ATTRS, info.storage, info.view, None, where)


def flatten(obj: Any, *, allow_pickle: bool = False) -> FlatState:
    """Flatten ``obj`` into its skeleton, payloads and aliases (what the format writer consumes).

    >>> import numpy as np
    >>> state = flatten({"w": np.zeros(2, np.float32), "epoch": 3})
    >>> state.skeleton, [(p.name, p.dtype, p.shape) for p in state.payloads]
    ({'dict': [['w', {'tensor': 'w'}], ['epoch', 3]]}, [('w', 'float32', (2,))])
    """
    fl = Flattener(allow_pickle=allow_pickle)
    skeleton = fl.flatten(obj)
    return FlatState(skeleton, tuple(fl.payloads), fl.aliases)


# -- decoding ---------------------------------------------------------------------

@dataclass
class Unflattener:
    """Rebuilds the object tree from a skeleton and the loaded leaf values."""

    values: dict[str, Any]
    allow_pickle: bool = False
    trusted: tuple = ()
    source: Any = None  # file path, for error messages
    context: dict = field(default_factory=dict)  # shared state for object decoders (recipes)

    def decode(self, node: Any) -> Any:
        if node is None or isinstance(node, (bool, int, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v) for v in node]
        if isinstance(node, dict) and len(node) >= 1:
            for tag in node:
                decoder = _DECODERS.get(tag)
                if decoder is not None:
                    return decoder(self, node)
        raise CorruptCheckpointError(
            f"{self.source}: unknown node {json.dumps(node)[:200]} in the manifest tree; "
            "the file is damaged or was written by a newer modelsafe (pip install -U modelsafe)",
            path=self.source,
        )

    def leaf(self, name: Any, kind: str = "tensor") -> Any:
        """The loaded payload ``name``, which the tree uses as a ``kind`` ("tensor", "bytes" or "pickle").

        The node and the payload must agree: a file that points a bytes or pickle node at
        a tensor (or the reverse) is damaged, never handed to code expecting the other.
        """
        try:
            value = self.values[name]
        except (KeyError, TypeError):
            raise CorruptCheckpointError(
                f"{self.source}: the manifest tree refers to tensor {name!r}, which the file does not hold",
                path=self.source, key=str(name),
            ) from None
        if isinstance(value, (bytes, bytearray)) != (kind != "tensor"):
            stored = "bytes" if isinstance(value, (bytes, bytearray)) else "a tensor"
            raise CorruptCheckpointError(
                f"{self.source}: the manifest tree uses payload {name!r} as {kind}, but the file stores {stored} there; "
                "the file is damaged", path=self.source, key=str(name),
            )
        return value

    def bad(self, node: Any, why: str) -> CorruptCheckpointError:
        return CorruptCheckpointError(f"{self.source}: malformed manifest node {json.dumps(node)[:200]}: {why}", path=self.source)


def _dec_int(un: Unflattener, node: dict) -> int:
    try:
        return int(node["int"])
    except (TypeError, ValueError):
        raise un.bad(node, "not an integer") from None


def _dec_float(un: Unflattener, node: dict) -> float:
    value = node["float"]
    if isinstance(value, str):
        if value in ("nan", "inf", "-inf"):
            return float(value)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise un.bad(node, "not a float")


def _dec_tuple(un: Unflattener, node: dict) -> tuple:
    items = node["tuple"]
    if not isinstance(items, list):
        raise un.bad(node, "tuple items must be a list")
    return tuple(un.decode(v) for v in items)


def _decode_key(un: Unflattener, node: Any) -> Any:
    key = un.decode(node)
    try:
        hash(key)
    except TypeError:
        raise un.bad(node, "dict key is not hashable") from None
    return key


def _dec_dict(un: Unflattener, node: dict) -> dict:
    items = node["dict"]
    if not isinstance(items, list) or not all(isinstance(p, list) and len(p) == 2 for p in items):
        raise un.bad(node, "dict items must be [key, value] pairs")
    kind = node.get("type")
    if kind == "OrderedDict":
        out = collections.OrderedDict((_decode_key(un, k), un.decode(v)) for k, v in items)
        if "_metadata" in node:
            out._metadata = un.decode(node["_metadata"])
        return out
    return {_decode_key(un, k): un.decode(v) for k, v in items}


def _dec_set(un: Unflattener, node: dict) -> Any:
    tag = "frozenset" if "frozenset" in node else "set"
    items = node[tag]
    if not isinstance(items, list):
        raise un.bad(node, "set items must be a list")
    values = (_decode_key(un, v) for v in items)
    return frozenset(values) if tag == "frozenset" else set(values)


def _dec_tensor(un: Unflattener, node: dict) -> Any:
    return un.leaf(node["tensor"])


def _dec_bytes(un: Unflattener, node: dict) -> Any:
    data = un.leaf(node["bytes"], "bytes")
    return bytearray(data) if node.get("type") == "bytearray" else data


def _dec_pickle(un: Unflattener, node: dict) -> Any:
    if not un.allow_pickle:
        raise UnsafeObjectError(
            f"{un.source}: holds a pickled {node.get('type', 'object')} at tensor {node['pickle']!r}; "
            "unpickling can run code, so it is refused. Pass allow_pickle=True only if you trust this file",
            path=un.source, key=str(node["pickle"]),
        )
    return pickle.loads(un.leaf(node["pickle"], "pickle"))


# Distinct stand-in record classes one load may create.  Creating a class costs about
# 0.3 ms (dataclasses generates and compiles its methods), so a few hundred kilobytes of
# hostile nodes, each with other field names, would otherwise take seconds; a real file
# holds a handful of record types however many records.
MAX_STAND_IN_TYPES = 256


def _record_class(un: Unflattener, node: dict, kind: str, fields: list[str]) -> type:
    """The class a record node comes back as: its own (found without importing), else a stand-in.

    Both are looked up once per load and name: a file of 20,000 records of one type
    finds (or creates) one class.
    """
    name = node[kind]
    cache = un.context.setdefault("record_classes", {})
    key = (kind, name if isinstance(name, str) else None, tuple(fields))
    cls = cache.get(key)
    if cls is None:
        cls = _own_record_class(un, kind, name, fields) or _stand_in_class(un, node, kind, name, fields)
        cache[key] = cls
    return cls


def _own_record_class(un: Unflattener, kind: str, name: Any, fields: list[str]) -> type | None:
    from .recipes import find_data_class

    cls = find_data_class(name, un.trusted, kind=kind)
    if cls is None:
        return None
    own = [f.name for f in dataclasses.fields(cls)] if kind == "dataclass" else list(cls._fields)
    return cls if (own == fields if kind == "namedtuple" else set(own) == set(fields)) else None


def _stand_in_class(un: Unflattener, node: dict, kind: str, name: Any, fields: list[str]) -> type:
    made = un.context.get("stand_in_types", 0)
    if made >= MAX_STAND_IN_TYPES:
        raise un.bad(node, f"more than {MAX_STAND_IN_TYPES} distinct record types in one file; refused as hostile")
    un.context["stand_in_types"] = made + 1
    typename = str(name).rpartition(":")[2].rpartition(".")[2]
    typename = typename if _plain_name(typename) else "Record"
    if kind == "namedtuple":
        return collections.namedtuple(typename, fields, rename=True)
    return dataclasses.make_dataclass(typename, fields)


def _dec_namedtuple(un: Unflattener, node: dict) -> tuple:
    fields, items = node.get("fields"), node.get("items")
    if not (isinstance(fields, list) and isinstance(items, list) and len(fields) == len(items)):
        raise un.bad(node, "namedtuple needs equally long fields and items")
    if not all(isinstance(f, str) for f in fields):
        raise un.bad(node, "namedtuple field names must be strings")
    values = [un.decode(v) for v in items]
    return tuple.__new__(_record_class(un, node, "namedtuple", fields), values)


def _plain_name(name: str) -> bool:
    """A name a stand-in record class can use: an identifier, not a keyword, not __dunder__."""
    return name.isidentifier() and not keyword.iskeyword(name) and not (name.startswith("__") and name.endswith("__"))


def _dec_dataclass(un: Unflattener, node: dict) -> Any:
    pairs = node.get("fields")
    if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in pairs):
        raise un.bad(node, "dataclass fields must be [name, value] pairs")
    if not all(_plain_name(name) for name, _ in pairs) or len({name for name, _ in pairs}) != len(pairs):
        raise un.bad(node, "dataclass field names must be distinct identifiers (not keywords or __dunder__ names)")
    values = {name: un.decode(v) for name, v in pairs}
    obj = object.__new__(_record_class(un, node, "dataclass", list(values)))
    for name, value in values.items():
        object.__setattr__(obj, name, value)  # no __init__, __post_init__ or __setattr__ of the class runs
    return obj


register_decoder("int", _dec_int)
register_decoder("float", _dec_float)
register_decoder("tuple", _dec_tuple)
register_decoder("dict", _dec_dict)
register_decoder("set", _dec_set)
register_decoder("frozenset", _dec_set)
register_decoder("tensor", _dec_tensor)
register_decoder("bytes", _dec_bytes)
register_decoder("pickle", _dec_pickle)
register_decoder("namedtuple", _dec_namedtuple)
register_decoder("dataclass", _dec_dataclass)


def walk_refs(node: Any) -> Iterable[tuple[str, str]]:
    """Yield (tag, leaf name) for every leaf reference in a skeleton, in tree order."""
    stack = [node]
    while stack:
        cur = stack.pop()
        if isinstance(cur, list):
            stack.extend(reversed(cur))
        elif isinstance(cur, dict):
            for tag in ("tensor", "bytes", "pickle"):
                if tag in cur and isinstance(cur[tag], str):
                    yield tag, cur[tag]
                    break
            else:
                stack.extend(reversed(list(cur.values())))

