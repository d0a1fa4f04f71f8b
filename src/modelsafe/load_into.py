"""``ms.load_into``: restore saved state in place into objects you built yourself.

The target is a module, an optimizer, a scheduler, a GradScaler, an RNG object, a
tensor, an object of the Stateful protocol (``state_dict()`` / ``load_state_dict()``: a data
loader, a sampler, a metric), or a dict / list / tuple of them whose shape follows the saved tree
(``{"model": m, "optimizer": opt}`` for a file saved from the same dict).  Module
state is matched key by key, using full dotted names (``"model.fc.weight"``; a
module at the root of the target uses its own keys, ``"fc.weight"``):

* ``select``: a prefix, or a list of keys, of the *file*; only those are considered.  A lone
  module target stands where the selection lies in the saved tree: ``select="model."`` on a
  file of ``{"model": state_dict, "optim": ...}`` (a sharded checkpoint's tree) loads as the
  target ``{"model": module}`` would;
* ``rename``: ``{old_prefix: new_prefix}`` applied to the selected file keys;
* ``strict=True`` writes nothing unless every key matches in name, shape and dtype
  class (bool / integer / floating / complex) — otherwise
  :class:`~modelsafe.errors.IncompatibleStateError` carrying the :class:`LoadReport`.
  With ``select``, strict means every *selected* key must load; target keys outside
  the selection are left alone.

Only the tensors that are restored are read (from a memory map), each verified
against its checksum.  Dict entries the target does not name are ignored; a plain
value the target names (``{"epoch": 0}``) is replaced by the saved one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .adapters import frameworks_for_type
from .adapters.protocol import LoadTarget, StateMismatch
from .arguments import check_flag, check_path, check_rename, check_select, check_storage_options
from .errors import IncompatibleStateError, InvalidArgumentError, ModelsafeError
from .loading import add_aliases, buffers_on_demand, fetch_records, materialize
from .rng import LOAD_TARGETS as RNG_TARGETS
from .sources import open_source
from .stateful import STATEFUL_TARGET
from .tree import Unflattener, walk_refs

__all__ = ["LoadReport", "Mismatch", "load_into"]


@dataclass(frozen=True)
class Mismatch:
    """A key present on both sides whose shape or dtype class differs."""

    key: str
    saved_shape: Any
    saved_dtype: str | None
    target_shape: Any
    target_dtype: str | None

    def __str__(self) -> str:
        return (
            f"{self.key}: file {_shape(self.saved_shape)} {self.saved_dtype or ''}".rstrip()
            + f" vs target {_shape(self.target_shape)} {self.target_dtype or ''}".rstrip()
        )


def _shape(shape: Any) -> str:
    return str(tuple(shape)) if isinstance(shape, (list, tuple)) else str(shape)


@dataclass
class LoadReport:
    """What ``ms.load_into`` found: keys missing from the file, unexpected in it, mismatched, loaded.

    >>> r = LoadReport(missing=["fc.bias"])
    >>> r.ok, r.describe()
    (False, 'missing in the file: fc.bias')
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[Mismatch] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is missing, unexpected or mismatched."""
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self, limit: int = 8) -> str:
        def some(items: list) -> str:
            shown = ", ".join(str(i) for i in items[:limit])
            return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")

        parts = []
        if self.missing:
            parts.append(f"missing in the file: {some(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected in the file: {some(self.unexpected)}")
        if self.mismatched:
            parts.append(f"mismatched: {some(self.mismatched)}")
        return "; ".join(parts) or f"all {len(self.loaded)} keys match"

    def __str__(self) -> str:
        return f"LoadReport({len(self.loaded)} loaded; {self.describe()})"


# -- helpers ---------------------------------------------------------------------------------

_DTYPE_CLASSES = (("bool", "bool"), ("complex", "complex"), ("float", "float"), ("bfloat", "float"), ("int", "int"), ("uint", "int"))


def dtype_class(name: str | None) -> str | None:
    if name is None:
        return None
    name = name.rpartition(".")[2]  # a framework's spelling ("<fw>.float32")
    for prefix, cls in _DTYPE_CLASSES:
        if name.startswith(prefix):
            return cls
    return name


def _tensor_meta(value: Any) -> tuple[tuple, str] | None:
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is None or dtype is None or isinstance(value, (int, float, bool)):
        return None
    name = dtype.name if isinstance(getattr(dtype, "name", None), str) else str(dtype).rpartition(".")[2]
    return tuple(int(d) for d in shape), name


class _Session:
    """One load_into call: the open source and what is planned."""

    def __init__(self, source: Any, verify: bool, select: Any, rename: dict[str, str] | None) -> None:
        self.source = source
        self.verify = verify
        self.report = LoadReport()
        self.actions: list[Callable[[], None]] = []
        self._buffers: Any = None
        if isinstance(select, str):
            self.selected: Callable[[str], bool] = lambda k: k.startswith(select)
        elif select is None:
            self.selected = lambda k: True
        else:
            keys = set(select)
            self.selected = lambda k: k in keys
        self.filtering = select is not None
        self.select = select if isinstance(select, str) or select is None else list(select)
        self.renames = sorted((rename or {}).items(), key=lambda kv: -len(kv[0]))

    def rename(self, key: str) -> str:
        for old, new in self.renames:
            if key.startswith(old):
                return new + key[len(old):]
        return key

    def unflattener(self, values: dict | None = None) -> Unflattener:
        return Unflattener(values or {}, source=self.source.path)

    def record(self, name: str) -> Any:
        return self.source.records.get(self.source.aliases.get(name, name))

    def values(self, names: Iterable[str], framework: str | None, *, copy: bool = False) -> dict[str, Any]:
        names = list(dict.fromkeys(names))
        if not names:
            return {}
        if self._buffers is None:
            self._buffers = buffers_on_demand(self.source)  # remote: only the records asked for are read
        records = {}
        for name in names:
            rec = self.record(name)
            if rec is not None:
                records[rec.name] = rec
        fetch_records(self.source, records.values())
        values = materialize(
            self.source, self._buffers, records.values(), framework=framework, verify=self.verify, copy=copy
        )
        return add_aliases(values, {n: self.source.aliases[n] for n in names if n in self.source.aliases})

    def decode(self, node: Any, framework: str | None = None) -> Any:
        """The object a subtree holds; its tensors own their memory (the mapped file closes on return)."""
        names = [name for _, name in walk_refs(node)]
        return self.unflattener(self.values(names, framework, copy=True)).decode(node)


def _saved_dict_items(session: _Session, node: Any) -> list[tuple[Any, Any]] | None:
    """The decoded (key, value node) pairs of a saved dict node; None when ``node`` is no dict."""
    if isinstance(node, dict) and isinstance(node.get("dict"), list):
        un = session.unflattener()
        if not all(isinstance(p, list) and len(p) == 2 for p in node["dict"]):
            raise un.bad(node, "dict items must be [key, value] pairs")
        from .tree import _decode_key

        return [(_decode_key(un, k), v) for k, v in node["dict"]]
    return None


def _object_kind(node: Any) -> str | None:
    return node.get("object") if isinstance(node, dict) and isinstance(node.get("object"), str) else None


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}{key}"


# -- planning -----------------------------------------------------------------------------------

class _Planner:
    def __init__(self, session: _Session) -> None:
        self.s = session
        # full key -> (module/tensor owner, rel key, target value, its LoadTarget)
        self.targets: dict[str, tuple[Any, str, Any, LoadTarget]] = {}
        self.file_entries: list[tuple[str, str, Any]] = []   # (full file key, renamed key, value node)

    def plan(self, target: Any, node: Any, prefix: str, name: str) -> None:
        how = target_for(target)
        if how is not None and how.plan == "module":
            self.plan_module(target, how, node, prefix, name)
        elif how is not None and how.plan == "state":
            self.plan_stateful(target, how, node, name)
        elif how is not None and how.plan == "rng":
            self.plan_rng(target, how, node, name)
        elif how is not None and how.plan == "tensor":
            self.plan_tensor_owner(target, how, node, name)
        elif isinstance(target, dict):
            self.plan_dict(target, node, prefix)
        elif isinstance(target, (list, tuple)):
            self.plan_sequence(target, node, prefix)
        else:
            raise InvalidArgumentError(
                f"{self.s.source.path}: ms.load_into cannot restore into a {type(target).__name__} at {name or 'the root'} "
                "of the target; targets are modules, optimizers, schedulers, GradScalers, RNG objects, tensors, objects "
                "with state_dict()/load_state_dict() and dicts/lists/tuples of them",
                path=self.s.source.path, key=name or None,
            )

    # containers
    def plan_dict(self, target: dict, node: Any, prefix: str) -> None:
        items = _saved_dict_items(self.s, node)
        if items is None:
            self.s.report.missing.extend(_join(prefix, k) for k in target)
            return
        saved = dict(items)
        for key, value in target.items():
            full = _join(prefix, key)
            if key not in saved:
                if self.s.selected(full) or not self.s.filtering:
                    self.s.report.missing.append(full)
                continue
            child = saved[key]
            if target_for(value) is None and not isinstance(value, (dict, list, tuple)):
                if self.s.filtering and not self.s.selected(full):
                    continue
                self.plan_value(target, key, child, full)
            else:
                self.plan(value, child, full + ".", full)

    def plan_sequence(self, target: Any, node: Any, prefix: str) -> None:
        items = node.get("tuple", node.get("items")) if isinstance(node, dict) else node  # a tuple or namedtuple node
        if not isinstance(items, list) or len(items) != len(target):
            self.s.report.mismatched.append(
                Mismatch(prefix.rstrip(".") or "<root>", f"{len(items) if isinstance(items, list) else 'no'} items", None, f"{len(target)} items", None)
            )
            return
        for i, (value, child) in enumerate(zip(target, items)):
            full = _join(prefix, i)
            if target_for(value) is None and not isinstance(value, (dict, list, tuple)):
                if isinstance(target, list) and (self.s.selected(full) or not self.s.filtering):
                    self.plan_value(target, i, child, full)
            else:
                self.plan(value, child, full + ".", full)

    def plan_value(self, container: Any, key: Any, node: Any, full: str) -> None:
        def apply() -> None:
            container[key] = self.s.decode(node)

        self.s.actions.append(apply)
        self.s.report.loaded.append(full)

    # modules and tensors
    def plan_module(self, module: Any, how: LoadTarget, node: Any, prefix: str, name: str, at: str | None = None) -> None:
        """Plan the module's keys: file keys ``prefix + key``, target keys ``at + key`` (``at``: ``prefix``)."""
        state = _module_state_node(self.s, node, how.saved_kinds, root=not name)
        if state is None:
            self.s.report.mismatched.append(Mismatch(name or "<root>", _what(node), None, type(module).__name__, None))
            return
        items = _saved_dict_items(self.s, state) or []
        # wrappers (a compiled or data-parallel module) prefix state keys (LoadTarget.strip_prefixes): on
        # either side, use the views that match best (only when the caller maps keys neither way)
        views = [module]
        while (inner := how.unwrap(views[-1])) is not None:
            views.append(inner)
        strips = [""]
        if not (self.s.filtering or self.s.renames):
            strips += [w for w in how.strip_prefixes if items and all(isinstance(k, str) and k.startswith(w) for k, _ in items)]
        states = {id(view): how.named_state(view) for view in views}
        best, strip = max(
            ((view, cut) for view in views for cut in strips),
            key=lambda vc: len({str(k)[len(vc[1]):] for k, _ in items} & set(states[id(vc[0])])),
        )
        for key, child in items:
            full = _join(prefix, key)
            if self.s.selected(full):
                self.file_entries.append((full, self.s.rename(_join(prefix, str(key)[len(strip):])), child))
        for key, value in states[id(best)].items():
            self.targets[_join(prefix if at is None else at, key)] = (best, key, value, how)

    def plan_tensor_owner(self, tensor: Any, how: LoadTarget, node: Any, name: str) -> None:
        self.targets[name] = (None, name, tensor, how)
        if self.s.selected(name):
            self.file_entries.append((name, self.s.rename(name), node))

    # whole objects
    def plan_stateful(self, target: Any, how: LoadTarget, node: Any, name: str) -> None:
        if self.s.filtering and not (self.s.selected(name) or self.s.selected(name + ".")):
            return
        label = name or "<root>"
        found = _object_kind(node)
        if found is not None:
            if found not in how.saved_kinds or "state" not in node:
                self.s.report.mismatched.append(Mismatch(label, found, None, type(target).__name__, None))
                return
            state_node = node["state"]
        elif _saved_dict_items(self.s, node) is not None:
            state_node = node
        else:
            self.s.report.mismatched.append(Mismatch(label, _what(node), None, type(target).__name__, None))
            return
        state = self.s.decode(state_node, framework=how.framework)
        try:
            state = how.conform(target, state)
        except StateMismatch as exc:
            found_text = f"{exc.where}: {exc.found}" if exc.where else exc.found
            self.s.report.mismatched.append(Mismatch(label, found_text, None, exc.expected, None))
            return
        self.s.actions.append(lambda: how.assign(target, state))
        self.s.report.loaded.append(label)

    def plan_rng(self, target: Any, how: LoadTarget, node: Any, name: str) -> None:
        if self.s.filtering and not self.s.selected(name):
            return
        if _object_kind(node) is None:
            self.s.report.mismatched.append(Mismatch(name or "<root>", _what(node), None, type(target).__name__, None))
            return
        saved = self.s.decode(node)
        if type(saved) is not type(target):
            self.s.report.mismatched.append(Mismatch(name or "<root>", type(saved).__name__, None, type(target).__name__, None))
            return
        self.s.actions.append(lambda: how.assign(target, saved))
        self.s.report.loaded.append(name or "<root>")

    # key matching
    def match(self) -> None:
        report = self.s.report
        claimed: set[str] = set()
        tensors: list[tuple[str, str, tuple]] = []
        for full, renamed, child in self.file_entries:
            entry = self.targets.get(renamed)
            if entry is None:
                report.unexpected.append(renamed)
                continue
            claimed.add(renamed)
            owner, key, value, how = entry
            ref = child.get("tensor") if isinstance(child, dict) else None
            target_meta = _tensor_meta(value)
            if isinstance(ref, str) and target_meta is not None:
                rec = self.s.record(ref)
                if rec is None:
                    report.unexpected.append(renamed)
                    continue
                saved_shape, saved_dtype = tuple(rec.shape), rec.dtype.name
                if saved_shape != target_meta[0] or dtype_class(saved_dtype) != dtype_class(target_meta[1]):
                    report.mismatched.append(Mismatch(renamed, saved_shape, saved_dtype, target_meta[0], target_meta[1]))
                    continue
                tensors.append((renamed, ref, entry))
            elif target_meta is not None:
                report.mismatched.append(Mismatch(renamed, _what(child), None, target_meta[0], target_meta[1]))
            else:  # non-tensor state (e.g. a module's _extra_state)
                tensors.append((renamed, "", (owner, key, child, how)))
        if not self.s.filtering:
            report.missing.extend(k for k in self.targets if k not in claimed)
        else:  # what select asked for must exist in the file
            seen = {full for full, _, _ in self.file_entries} | set(report.loaded) | {m.key for m in report.mismatched}
            if isinstance(self.s.select, str):
                if not any(k.startswith(self.s.select) for k in seen):
                    report.missing.append(f"{self.s.select}*")
            else:
                report.missing.extend(k for k in self.s.select if k not in seen and k not in report.missing)
        self._plan_copies(tensors)

    def _plan_copies(self, entries: list[tuple[str, str, tuple]]) -> None:
        def apply() -> None:
            by_framework: dict[str | None, list[str]] = {}
            for _, ref, (_, _, _, how) in entries:
                if ref:
                    by_framework.setdefault(how.framework, []).append(ref)
            values: dict[str, Any] = {}
            for framework, names in by_framework.items():
                values.update(self.s.values(names, framework))
            per_module: dict[int, tuple[Any, LoadTarget, dict]] = {}
            for full, ref, (owner, key, target_value, how) in entries:
                value = values[ref] if ref else self.s.decode(target_value)
                if owner is None:
                    how.assign(target_value, value)
                else:
                    per_module.setdefault(id(owner), (owner, how, {}))[2][key] = value
            for module, how, state in per_module.values():
                how.assign(module, state)

        if entries:
            self.s.actions.append(apply)
            self.s.report.loaded.extend(full for full, _, _ in entries)


def target_for(obj: Any) -> LoadTarget | None:
    """How ``obj`` is restored in place (modelsafe's own generators, its frameworks' targets, Stateful), or None."""
    for how in RNG_TARGETS:
        if how.handles(obj):
            return how
    for framework in frameworks_for_type(type(obj)):
        for how in framework.load_targets:
            if how.handles(obj):
                return how
    if STATEFUL_TARGET.handles(obj):  # any other object with state_dict() / load_state_dict()
        return STATEFUL_TARGET
    return None


def _module_state_node(session: _Session, node: Any, kinds: tuple[str, ...], *, root: bool) -> Any:
    kind = _object_kind(node)
    if kind in kinds:
        return node.get("state")
    if kind is not None:
        return None
    items = _saved_dict_items(session, node)
    if items is None:
        return None
    if root:  # a lone module against a saved training state: use the one saved module in it
        modules = [v for _, v in items if _object_kind(v) in kinds and "state" in v]
        if len(modules) == 1 and not any(isinstance(v, dict) and "tensor" in v for _, v in items):
            return modules[0]["state"]
    return node


def _selected_place(session: _Session, target: Any, tree: Any) -> tuple[Any, str] | None:
    """The saved node ``select`` points into, and its prefix, for a lone module target; None: the root.

    ``ms.load_into(model, p, select="model.")`` on a file of ``{"model": state_dict, "optim": ...}`` (a sharded
    checkpoint is always such a tree) then loads as ``ms.load_into({"model": model}, p, select="model.")`` does:
    the module stands at ``model``, its file keys are ``model.<key>``.  A list of keys names a place when all of
    them lie under the same one.  The walk follows dict keys only, longest first, so a flat state dict's dotted
    keys (``"0.weight"``) are never taken apart.
    """
    how = target_for(target)
    select = session.select
    if how is None or how.plan != "module" or select is None:
        return None
    walks = [_walk(session, tree, key) for key in ([select] if isinstance(select, str) else select)]
    if not walks or not walks[0][1] or any(prefix != walks[0][1] for _, prefix in walks):
        return None
    return walks[0]


def _walk(session: _Session, node: Any, key: str) -> tuple[Any, str]:
    """The deepest saved dict or object node on the way to file key ``key``, and its prefix (``"model."``)."""
    prefix = ""
    while _object_kind(node) is None and (items := _saved_dict_items(session, node)):
        step = max(
            ((k, child) for k, child in items if isinstance(k, str) and key.startswith(f"{prefix}{k}.")
             and (_object_kind(child) is not None or _saved_dict_items(session, child) is not None)),
            key=lambda kc: len(kc[0]), default=None,
        )
        if step is None:
            break
        node, prefix = step[1], f"{prefix}{step[0]}."
    return node, prefix


def _what(node: Any) -> str:
    kind = _object_kind(node)
    if kind:
        return kind
    if isinstance(node, dict):
        return next(iter(node), "value")
    return type(node).__name__


# -- entry point ----------------------------------------------------------------------------------

def load_into(
    target: Any,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    select: str | Iterable[str] | None = None,
    rename: dict[str, str] | None = None,
    verify: bool = True,
    storage_options: dict | None = None,
) -> LoadReport:
    """Restore saved state in place into ``target``; returns a :class:`LoadReport`.

    ``path`` may be a URL (``s3://...``, configured by ``storage_options``) as in :func:`modelsafe.load`.

    >>> import numpy as np, tempfile, os, modelsafe as ms
    >>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> ms.save({"w": np.arange(3.0), "step": 4}, p)
    >>> target = {"w": np.zeros(3), "step": 0}
    >>> sorted(ms.load_into(target, p).loaded), target["w"].tolist(), target["step"]
    (['step', 'w'], [0.0, 1.0, 2.0], 4)
    >>> ms.load_into({"w": np.zeros(4)}, p, strict=False).mismatched[0].key
    'w'
    """
    _check_arguments(target, path, strict, verify, rename)
    select = check_select(select)
    check_storage_options(storage_options, path, call="ms.load_into")
    with open_source(path, storage_options=storage_options) as source:
        session = _Session(source, verify, select, rename)
        planner = _Planner(session)
        tree = source.manifest.get("tree")
        place = _selected_place(session, target, tree)
        if place is None:
            planner.plan(target, tree, "", "")
        else:  # the module stands where select points; rename maps that place too (select="m.", rename={"m.": ""})
            node, prefix = place
            planner.plan_module(target, target_for(target), node, prefix, prefix.rstrip("."), at=session.rename(prefix))
        planner.match()
        report = session.report
        if strict and not report.ok:
            raise IncompatibleStateError(
                f"{source.path}: the saved state does not fit the target, so nothing was loaded ({report.describe()}). "
                "Pass strict=False to load what matches, or select=/rename= to map keys",
                path=source.path, report=report,
            )
        for action in session.actions:
            try:
                action()
            except ModelsafeError:
                raise
            except Exception as exc:  # the framework refused state that passed our checks
                raise IncompatibleStateError(
                    f"{source.path}: restoring into the target failed: {type(exc).__name__}: {exc}. The target may be "
                    "partly restored; rebuild it before trying again",
                    path=source.path, report=report,
                ) from exc
        return report


def _check_arguments(target: Any, path: Any, strict: Any, verify: Any, rename: Any) -> None:
    """Refuse wrong arguments before anything is opened, naming what to pass instead."""
    if isinstance(path, dict):
        hint = (
            "it reads a file; to restore a state dict you hold in memory call target.load_state_dict(state) "
            "(for a module or optimizer), or save it with ms.save first"
        )
    elif isinstance(target, (str, os.PathLike)):
        hint = "the arguments look swapped: ms.load_into(target, path) takes the object to restore first"
    else:
        hint = ""
    check_path(path, call="ms.load_into(target, path)", hint=hint)
    check_flag(strict, call="ms.load_into", name="strict")
    check_flag(verify, call="ms.load_into", name="verify")
    check_rename(rename)
