"""What a saved file or checkpoint holds, as plain data: the model behind ``show``.

Reads only headers and manifests (no tensor bytes), so it is fast on files with
100,000 tensors and on multi-gigabyte files alike.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, NamedTuple

from .output import jsonable


class TensorRow(NamedTuple):
    """One row of the tensor table (a tuple: cheap to make 100,000 of)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    kind: str = "tensor"          # "tensor" | "bytes" | "pickle"
    tied_to: str | None = None    # for aliases: the stored tensor this name shares
    file: str | None = None       # shard file inside a checkpoint directory
    framework: str | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": self.shape, "bytes": self.nbytes, "kind": self.kind}
        if self.tied_to is not None:
            out["tied_to"] = self.tied_to
        if self.file is not None:
            out["file"] = self.file
        if self.framework is not None:
            out["framework"] = self.framework
        return out


@dataclass
class RecipeRow:
    path: str       # where in the saved tree: obj["model"]
    kind: str       # the object node's kind (module, optimizer, ...)
    summary: str    # Class(arg=..., ...) or compact JSON
    node: Any       # the recipe as stored

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "kind": self.kind, "summary": self.summary, "recipe": self.node}


@dataclass
class Description:
    path: str
    is_modelsafe: bool
    format_version: str | None
    writer: str | None
    framework: str | None
    versions: dict[str, Any]
    file_size: int | None
    metadata: Any
    checkpoint: dict[str, Any]
    recipes: list[RecipeRow]
    tensors: list[TensorRow]
    pickled: list[str] = field(default_factory=list)
    copied_views: list[str] = field(default_factory=list)  # views of a shared storage, stored as copies

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors if t.tied_to is None)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values only (non-finite floats as strings), ready for json.dumps."""
        document = jsonable({
            "path": self.path,
            "modelsafe": self.is_modelsafe,
            "format_version": self.format_version,
            "writer": self.writer,
            "framework": self.framework,
            "versions": self.versions,
            "file_size": self.file_size,
            "checkpoint": self.checkpoint or None,
            "metadata": self.metadata,
            "recipes": [r.as_dict() for r in self.recipes],
            "pickled": self.pickled,
            "copied_views": self.copied_views,
            "totals": {"tensors": sum(1 for t in self.tensors if t.tied_to is None), "names": len(self.tensors), "bytes": self.total_bytes},
        })
        default = self.framework
        document["tensors"] = [  # str, int and tuples of int only (json writes tuples as arrays)
            {"name": name, "dtype": dtype, "shape": shape, "bytes": nbytes, "kind": kind}
            if tied_to is None and file is None and framework == default else t.as_dict()
            for t in self.tensors
            for name, dtype, shape, nbytes, kind, tied_to, file, framework in (t,)
        ]
        return document


CHECKPOINT_KEYS = ("name", "step", "time", "metrics", "lineage")


def _checkpoint_block(manifest: dict) -> dict[str, Any]:
    """Name, step, time, metrics and lineage of a checkpoint directory's manifest ({} for files)."""
    block = manifest.get("checkpoint")
    if not isinstance(block, dict):
        return {}
    out = {k: block[k] for k in CHECKPOINT_KEYS if k in block and block[k] not in (None, [], {})}
    files = manifest.get("files")
    if isinstance(files, dict) and files:
        out["files"] = {rel: entry.get("size") if isinstance(entry, dict) else None for rel, entry in files.items()}
    return out


def describe(reader: Any) -> Description:
    """Describe an open :class:`modelsafe.Reader` (file or checkpoint directory)."""
    manifest = reader.manifest
    records = reader.records
    aliases: dict[str, str] = manifest.get("aliases") or {}
    is_modelsafe = bool(manifest.get("writer"))
    version = manifest.get("format_version")
    order = tensor_order(reader)
    if aliases:
        rows = [_row(name, records[aliases.get(name, name)], aliases.get(name)) for name in order]
    else:
        rows = [
            TensorRow(name, r.dtype.name, r.shape, r.end - r.begin, "tensor", None, r.file, r.framework)
            if r.kind == "tensor" else _row(name, r)
            for name in order
            for r in (records[name],)
        ]
    if len(order) != len(records) + len(aliases):  # bytes and pickled payloads come last
        listed = set(order)
        rows.extend(_row(name, record) for name, record in records.items() if name not in listed)
    return Description(
        path=reader.path,
        is_modelsafe=is_modelsafe,
        format_version=f"{version[0]}.{version[1]}" if is_modelsafe and isinstance(version, list) and len(version) == 2 else None,
        writer=manifest.get("writer"),
        framework=manifest.get("framework"),
        versions=_strings(manifest.get("versions")),
        file_size=_size(reader.path),
        metadata=reader.metadata,
        checkpoint=_checkpoint_block(manifest),
        recipes=list(find_recipes(manifest.get("tree"))),
        tensors=rows,
        pickled=[n for n, r in records.items() if r.kind == "pickle"],
        copied_views=_names(manifest.get("copied_views")),
    )


def _strings(value: Any) -> dict[str, str]:
    """The string entries of an informational manifest mapping (``versions``); anything else is ignored."""
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and isinstance(v, str)}


def _names(value: Any) -> list[str]:
    """The strings of a manifest list (an informational field: anything else is ignored)."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def tensor_order(reader: Any) -> list[str]:
    """Tensor names in the order of the saved tree (as ``reader.keys()``).

    A flat state_dict (the common case, and the one with 100,000 entries) is read
    straight from its ``{"dict": [[key, {"tensor": name}], ...]}`` node.
    """
    tree = reader.manifest.get("tree")
    items = tree.get("dict") if isinstance(tree, dict) and len(tree) == 1 else None
    if isinstance(items, list):
        try:
            names = [value["tensor"] for _key, value in items]
        except (KeyError, TypeError, ValueError):
            names = None
        # names come from the file: check they are strings before hashing them
        if names is not None and all(isinstance(n, str) for n in names) and len(set(names)) == len(names):
            records, aliases = reader.records, reader.manifest.get("aliases") or {}
            if all(n in records or n in aliases for n in names):
                return names
    return reader.keys()


def _row(name: str, record: Any, tied_to: str | None = None) -> TensorRow:
    kind = record.kind
    if kind == "tensor":
        return TensorRow(name, record.dtype.name, record.shape, record.end - record.begin, kind, tied_to, record.file, record.framework)
    return TensorRow(name, kind, record.shape, record.end - record.begin, kind, tied_to, record.file, None)


def _size(path: str) -> int | None:
    try:
        if os.path.isdir(path):
            total = 0
            for root, _dirs, files in os.walk(path):
                total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
            return total
        return os.path.getsize(path)
    except OSError:
        return None


# -- recipes ----------------------------------------------------------------------

def find_recipes(tree: Any) -> Iterator[RecipeRow]:
    """Every framework-object node (``{"object": kind, ...}``) and every node with a
    ``"recipe"`` in the manifest tree, with its tree path, in tree order."""
    if not _has_objects(tree):
        return
    for path, node in _walk(tree, "obj"):
        if "object" in node or "recipe" in node:
            kind = node.get("object")
            recipe = node.get("recipe", {k: v for k, v in node.items() if k != "object"})
            # an object stored without a recipe (rebuilt from a config of its framework's own) shows its class
            summary = node["class"] if "recipe" not in node and isinstance(node.get("class"), str) else summarize_recipe(recipe)
            yield RecipeRow(path, str(kind) if kind is not None else "recipe", summary, recipe)


def _has_objects(tree: Any) -> bool:
    """True if any node of ``tree`` is an object or carries a recipe (no paths built)."""
    stack = [tree]
    pop, push = stack.pop, stack.extend
    while stack:
        cur = pop()
        if type(cur) is dict:
            if "tensor" in cur:
                continue
            if "object" in cur or "recipe" in cur:
                return True
            push(cur.values())
        elif type(cur) is list:
            push(cur)
    return False


def _walk(node: Any, path: str) -> Iterator[tuple[str, dict]]:
    stack: list[tuple[str, Any]] = [(path, node)]
    while stack:
        here, cur = stack.pop()
        children: list[tuple[str, Any]] = []
        if isinstance(cur, list):
            children = [(f"{here}[{i}]", v) for i, v in enumerate(cur)]
        elif isinstance(cur, dict):
            if any(tag in cur for tag in ("tensor", "bytes", "pickle")):
                continue
            if "object" in cur or "recipe" in cur:
                yield here, cur
                # objects may nest objects (a scheduler holding an optimizer)
            children = list(_children(cur, here))
        stack.extend(reversed(children))


def _children(node: dict, here: str) -> Iterator[tuple[str, Any]]:
    if "dict" in node and isinstance(node["dict"], list):
        for pair in node["dict"]:
            if isinstance(pair, list) and len(pair) == 2:
                yield f"{here}[{_key_text(pair[0])}]", pair[1]
        return
    if "tuple" in node and isinstance(node["tuple"], list):
        for i, v in enumerate(node["tuple"]):
            yield f"{here}[{i}]", v
        return
    if "namedtuple" in node and isinstance(node.get("items"), list):
        fields = node.get("fields") if isinstance(node.get("fields"), list) else []
        for i, v in enumerate(node["items"]):
            yield (f"{here}.{fields[i]}" if i < len(fields) else f"{here}[{i}]"), v
        return
    if "dataclass" in node and isinstance(node.get("fields"), list):
        for pair in node["fields"]:
            if isinstance(pair, list) and len(pair) == 2:
                yield f"{here}.{pair[0]}", pair[1]
        return
    for key, value in node.items():
        if isinstance(value, (dict, list)) and key not in ("recipe",):
            yield f"{here}.{key}", value


def _key_text(key: Any) -> str:
    if isinstance(key, str):
        return json.dumps(key)
    if isinstance(key, dict) and "int" in key:
        return str(key["int"])
    return json.dumps(key) if not isinstance(key, dict) else json.dumps(key, separators=(",", ":"))


def summarize_recipe(recipe: Any, limit: int = 160) -> str:
    """``Class(arg, key=value)`` when the recipe names a class and arguments, else compact JSON."""
    if isinstance(recipe, dict):
        cls = recipe.get("name")  # recipes are written as {"name", "args", "kwargs"}
        if isinstance(cls, str):
            args = recipe.get("args") if isinstance(recipe.get("args"), list) else []
            kwargs = recipe.get("kwargs") if isinstance(recipe.get("kwargs"), (dict, list)) else {}
            if isinstance(kwargs, list):  # [[key, node], ...]
                kwargs = {str(p[0]): p[1] for p in kwargs if isinstance(p, list) and len(p) == 2}
            parts = [_node_text(a) for a in args] + [f"{k}={_node_text(v)}" for k, v in kwargs.items()]
            return _clip(f"{cls}({', '.join(parts)})", limit)
    return _clip(json.dumps(recipe, separators=(",", ":"), default=str), limit)


def _node_text(node: Any) -> str:
    if isinstance(node, dict):
        if "tensor" in node:
            return f"<tensor {node['tensor']}>"
        if "float" in node:
            return str(node["float"])
        if "int" in node:
            return str(node["int"])
        if "tuple" in node and isinstance(node["tuple"], list):
            inner = ", ".join(_node_text(v) for v in node["tuple"])
            return f"({inner}{',' if len(node['tuple']) == 1 else ''})"
        if "object" in node or "recipe" in node:
            return summarize_recipe(node.get("recipe", node), limit=60)
        return json.dumps(node, separators=(",", ":"), default=str)
    if isinstance(node, list):
        return "[" + ", ".join(_node_text(v) for v in node) + "]"
    return json.dumps(node)


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- plain values -------------------------------------------------------------------

def scalar_values(tree: Any) -> Iterator[tuple[str, Any]]:
    """(tree path, value) of every JSON scalar in the saved tree: ``obj["epoch"] -> 5``.

    Tensors, bytes and pickles are skipped; recipe arguments are included (a changed
    learning rate shows up as ``obj["optimizer"].recipe...``).
    """
    stack: list[tuple[str, Any]] = [("obj", tree)]
    while stack:
        here, cur = stack.pop()
        if cur is None or isinstance(cur, (bool, int, str)):
            yield here, cur
            continue
        if isinstance(cur, list):
            stack.extend(reversed([(f"{here}[{i}]", v) for i, v in enumerate(cur)]))
            continue
        if not isinstance(cur, dict) or any(tag in cur for tag in ("tensor", "bytes", "pickle")):
            continue
        if len(cur) == 1 and "int" in cur:
            try:
                yield here, int(cur["int"])
            except (TypeError, ValueError):
                yield here, cur["int"]
            continue
        if len(cur) == 1 and "float" in cur:
            value = cur["float"]
            yield here, float(value) if isinstance(value, (int, float, str)) and not isinstance(value, bool) else value
            continue
        children = list(_children(cur, here)) if not ("object" in cur or "recipe" in cur) else [
            (f"{here}.{k}", v) for k, v in cur.items() if k != "object"
        ]
        stack.extend(reversed(children))
