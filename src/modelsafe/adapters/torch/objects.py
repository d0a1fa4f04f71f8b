"""PyTorch framework objects: modules, optimizers, LR schedulers, GradScaler, Generators.

Imported lazily (the first time such an object is saved or loaded, or a ``torch.``
name is looked up); :func:`register_builtins` registers the built-in recipes: every
``torch.nn`` layer, every ``torch.optim`` optimizer, every scheduler in
``torch.optim.lr_scheduler`` and ``torch.optim.swa_utils``, and ``torch.amp.GradScaler``.

* A module is stored as its recipe plus ``state_dict(keep_vars=True)``; its tensors
  are ordinary leaves named ``<path>.<state key>``.  Loading builds the module from
  the recipe and assigns the loaded tensors (``load_state_dict(assign=True)``), so
  dtypes, devices and tied weights are those of the file.  Built-in ``torch.nn``
  layers and containers made without ``ms.build`` get a recipe inferred from their
  attributes, checked by building a twin on the meta device.
* An optimizer is stored as class + defaults, its ``state_dict()``, and references
  to its parameters: the leaf names of the module parameters saved in the same
  tree (``"model.fc.weight"``).  Parameters no module in the tree owns are stored
  with the optimizer, so an optimizer saved alone comes back bound to its own
  loaded parameter tensors.
* A scheduler is stored as class + constructor arguments inferred from its state,
  a reference to its optimizer and its ``state_dict()``.  Rebuilding it leaves the
  optimizer's hyper-parameters exactly as loaded.
"""

from __future__ import annotations

import collections
import inspect
import warnings
from typing import Any

import torch
from torch import nn

from ...errors import CorruptCheckpointError, IncompatibleStateError, MissingRecipeError, ModelsafeError, UnsupportedObjectError
from ...objects import call_recipe, decode_recipe, encode_object, encode_recipe, in_recipe, remember_recipe, resolve_recipe
from ...recipes import RECIPE_ATTR, Recipe, qualified_name, recipe_of, register, registered_name
from ...tree import Flattener, Unflattener, format_path
from ..protocol import StateMismatch

_MISSING = object()
PARAM_NAMES = "torch.param_leaves"  # Flattener.context key: id(parameter) -> leaf name

# -- built-in registrations ---------------------------------------------------------------


def register_builtins() -> None:
    """Register every torch.nn layer, torch.optim optimizer, LR scheduler and GradScaler by its torch name."""
    from torch.optim import lr_scheduler, swa_utils

    for name, obj in vars(nn).items():
        if isinstance(obj, type) and issubclass(obj, nn.Module) and not name.startswith("_"):
            register(obj, name=f"torch.nn.{name}")
    for name, obj in vars(torch.optim).items():
        if isinstance(obj, type) and issubclass(obj, torch.optim.Optimizer) and not name.startswith("_"):
            register(obj, name=f"torch.optim.{name}")
    for module, prefix in ((lr_scheduler, "torch.optim.lr_scheduler"), (swa_utils, "torch.optim.swa_utils")):
        for name, obj in vars(module).items():
            if isinstance(obj, type) and issubclass(obj, lr_scheduler.LRScheduler) and not name.startswith("_"):
                register(obj, name=f"{prefix}.{name}")
    register(torch.amp.GradScaler, name="torch.amp.GradScaler")


_SCHEDULER_BASE = torch.optim.lr_scheduler.LRScheduler


def _class_label(obj: Any) -> str:
    tp = obj if isinstance(obj, type) else type(obj)
    return registered_name(tp) or qualified_name(tp)


def _no_recipe(un: Unflattener, node: dict, what: str) -> MissingRecipeError:
    where = node.get("path", "an object")
    why = node.get("why") or "it was not made with a recipe"
    return MissingRecipeError(
        f"{un.source}: {where} is a {node.get('class', what)} saved without a recipe, so ms.load cannot rebuild it "
        f"({why}). Decorate the class with @ms.rebuildable (or create it with ms.build(cls, ...)) before saving; "
        "to restore these weights into an object you construct yourself, use ms.load_into(obj, path) "
        "(ms.open(path) reads single tensors)",
        path=un.source, key=str(where),
    )


ALIGNMENT = 64


def _aligned_copy(t: torch.Tensor) -> torch.Tensor:
    copy = t.detach().clone(memory_format=torch.contiguous_format)
    if isinstance(t, nn.Parameter):
        return nn.Parameter(copy, requires_grad=t.requires_grad)
    return copy.requires_grad_(t.requires_grad)


def _rebuild_failed(un: Unflattener, node: dict, what: str, exc: Exception) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{un.source}: rebuilding the {what} at {node.get('path')} failed: {exc}. "
        f"Build it yourself and restore its state with ms.load_into({what}, path)",
        path=un.source, key=str(node.get("path")),
    )


def align_loaded_tensors(un: Unflattener) -> None:
    """Give every loaded torch tensor that is not 64-byte aligned its own aligned memory, once per load.

    The writer puts payloads whose size is a multiple of 64 bytes on 64-byte boundaries;
    the small remainder is only naturally aligned, and torch's reductions (dot, sum,
    matmul) can round differently at other alignments: without this a resumed run
    would drift from an uninterrupted one.  Tied tensors stay one object.
    """
    if un.context.get("torch.aligned"):
        return
    un.context["torch.aligned"] = True
    tensors: dict[int, torch.Tensor] = {}
    for value in un.values.values():
        if isinstance(value, torch.Tensor) and value.numel() and value.data_ptr() % ALIGNMENT:
            tensors[id(value)] = value
    if not tensors:
        return
    copies = {key: _aligned_copy(t) for key, t in tensors.items()}
    for name, value in un.values.items():
        new = copies.get(id(value))
        if new is not None:
            un.values[name] = new


def _need_torch(un: Unflattener, value: Any, where: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise UnsupportedObjectError(
            f"{un.source}: {where} was loaded as {type(value).__name__}, not a torch tensor; rebuilding torch "
            "objects needs torch tensors, so load without framework= (or framework='torch')",
            path=un.source, key=where,
        )


# -- recipes inferred for built-in torch.nn layers ------------------------------------------

_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
_SKIP_ARGS = {"device", "dtype"}
# constructor argument -> (attribute, how to turn it into the argument)
_ATTRIBUTE_ARGS: dict[type, dict[str, Any]] = {
    nn.MultiheadAttention: {
        "bias": lambda m: m.in_proj_bias is not None,
        "add_bias_kv": lambda m: m.bias_k is not None,
    },
}
_STORABLE_SCALARS = (type(None), bool, int, float, str)


def _json_like(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_json_like(v) for v in value)
    return type(value) in _STORABLE_SCALARS


def _init_parameters(cls: type) -> list[inspect.Parameter]:
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        named = [p for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if named:
            if klass is not cls:  # e.g. nn.LSTM(*args, **kwargs) forwards to RNNBase(mode, ...)
                named = [p for p in named if p.name != "mode"]
            return named
    return []


def _infer_layer_recipe(module: nn.Module) -> tuple[Recipe | None, str]:
    cls = type(module)
    label = f"{cls.__module__}.{cls.__qualname__}"
    stable = registered_name(cls)
    if stable is None or not stable.startswith("torch.nn."):
        return None, f"{label} is neither @ms.rebuildable nor made with ms.build"
    if cls is nn.Sequential:
        names = list(module._modules)
        children = [m for m in module._modules.values()]
        if names == [str(i) for i in range(len(names))]:
            return Recipe(cls, tuple(children)), ""
        return Recipe(cls, (collections.OrderedDict(module._modules),)), ""
    if cls is nn.ModuleList:
        return Recipe(cls, (list(module._modules.values()),)), ""
    if cls is nn.ModuleDict:
        return Recipe(cls, (dict(module._modules),)), ""
    kwargs: dict[str, Any] = {}
    special = _ATTRIBUTE_ARGS.get(cls, {})
    for p in _init_parameters(cls):
        if p.name in _SKIP_ARGS:
            continue
        if p.name in special:
            kwargs[p.name] = special[p.name](module)
            continue
        value = getattr(module, p.name, _MISSING)
        if value is _MISSING or isinstance(value, nn.Module):
            if p.default is p.empty:
                return None, f"the argument {p.name!r} of {label} cannot be read back from the layer; make it with ms.build"
            continue
        if isinstance(value, torch.Tensor) or value is None and isinstance(p.default, bool):
            if not isinstance(p.default, bool):
                if p.default is p.empty:
                    return None, f"the argument {p.name!r} of {label} cannot be read back from the layer"
                continue
            value = value is not None
        if not _json_like(value):
            if p.default is p.empty:
                return None, f"the argument {p.name!r} of {label} is not storable"
            continue
        if p.default is not p.empty and type(value) is type(p.default) and value == p.default:
            continue  # defaults stay implicit (some layers refuse arguments they do not use)
        kwargs[p.name] = value
    if not _same_layer(module, cls, kwargs):
        return None, f"the arguments of {label} could not be inferred from its attributes; make it with ms.build({cls.__name__}, ...)"
    return Recipe(cls, (), kwargs), ""


def _same_layer(module: nn.Module, cls: type, kwargs: dict) -> bool:
    """Build a twin on the meta device; it must have the same state layout and description."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.device("meta"):
                twin = cls(**kwargs)
    except Exception:
        return False
    mine, theirs = module.state_dict(), twin.state_dict()
    if list(mine) != list(theirs):
        return False
    for key, value in mine.items():
        other = theirs[key]
        if isinstance(value, torch.Tensor) != isinstance(other, torch.Tensor):
            return False
        if isinstance(value, torch.Tensor) and tuple(value.shape) != tuple(other.shape):
            return False
    return module.extra_repr() == twin.extra_repr()


def _wrapped(module: nn.Module) -> nn.Module | None:
    if type(module).__name__ == "OptimizedModule" and isinstance(getattr(module, "_orig_mod", None), nn.Module):
        return module._orig_mod
    if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return module.module
    return None


def module_recipe(module: nn.Module) -> tuple[Recipe | None, bool, str]:
    """(recipe, explicit, reason when there is none)."""
    recipe = recipe_of(module)
    if recipe is not None:
        return recipe, True, ""
    recipe, why = _infer_layer_recipe(module)
    return recipe, False, why


def _dry_run(recipe: Recipe, path: tuple, label: str) -> str:
    """'' if ``recipe`` encodes; else why not (encoding into a scratch Flattener, so nothing leaks)."""
    scratch = Flattener()
    try:
        encode_recipe(scratch, recipe, path, label)
    except UnsupportedObjectError as exc:
        return exc.message
    return ""


# -- modules ------------------------------------------------------------------------------------


class ModuleCodec:
    kinds = ("torch.module",)

    def handles(self, tp: type) -> bool:
        return issubclass(tp, nn.Module)

    def encode(self, fl: Flattener, module: nn.Module, path: tuple) -> dict:
        # torch.compile / DataParallel / DDP wrap the module; the file holds the module itself (its keys, its recipe)
        while (inner := _wrapped(module)) is not None:
            module = inner
        recipe, explicit, why = module_recipe(module)
        label = _class_label(module)
        if in_recipe(fl):
            if recipe is None:
                raise UnsupportedObjectError(f"the module {label} has no recipe: {why}", key=format_path(path))

            def recipe_only(node: dict) -> None:
                node["recipe"] = encode_recipe(fl, recipe, path, label)

            return encode_object(fl, module, path, "torch.module", recipe_only, with_state=False)
        if recipe is not None and not explicit:
            problem = _dry_run(recipe, path, label)
            if problem:
                recipe, why = None, problem

        def body(node: dict) -> None:
            node["recipe"] = None
            node["training"] = module.training
            state = module.state_dict(keep_vars=True)
            node["state"] = fl.encode(state, path)
            _note_parameter_leaves(fl, state, node["state"])
            if recipe is None:
                node["why"] = why
            else:
                node["recipe"] = encode_recipe(fl, recipe, path, label)

        return encode_object(fl, module, path, "torch.module", body)

    def decode(self, un: Unflattener, node: dict) -> nn.Module:
        if node.get("recipe") is None:
            raise _no_recipe(un, node, "torch module")
        resolve_recipe(un, node["recipe"], class_hint=node.get("class"), kind=MODULE_KIND)  # fails before any work
        align_loaded_tensors(un)
        un.context.setdefault("torch.default_device", torch.get_default_device())  # before any meta context
        state = un.decode(node["state"]) if "state" in node else None
        if state is not None and not isinstance(state, dict):
            raise un.bad(node, "module state must be a dict")  # before anything is built
        module = _build(un, node, state)
        if isinstance(node.get("training"), bool):
            module.train(node["training"])
        return module


def _subclass_of(base: type, *, factories: bool) -> Any:
    def test(target: Any) -> bool:
        return issubclass(target, base) if isinstance(target, type) else factories and callable(target)

    return test


# what each node's recipe may name: its own kind of class, or (modules, schedulers) a registered factory
MODULE_KIND = (_subclass_of(nn.Module, factories=True), "a torch module class")
OPTIMIZER_KIND = (_subclass_of(torch.optim.Optimizer, factories=False), "a torch optimizer class")
SCHEDULER_KIND = (_subclass_of(torch.optim.lr_scheduler.LRScheduler, factories=True), "an LR scheduler class")
SCALER_KIND = (_subclass_of(torch.amp.GradScaler, factories=False), "torch.amp.GradScaler")


def _checked_module(un: Unflattener, node: dict, module: Any) -> nn.Module:
    if not isinstance(module, nn.Module):
        raise CorruptCheckpointError(
            f"{un.source}: the recipe {node['recipe'].get('name')!r} at {node.get('path')} built a "
            f"{type(module).__name__}, not a torch module",
            path=un.source,
        )
    return module


# Bytes one load may allocate for module tensors the file does not hold: non-persistent
# buffers and caches computed by constructors (rotary tables, causal masks), and the
# weights of a module saved only as a constructor argument.  Everything else a rebuilt
# module holds comes from the file.  A real model needs a few MiB of such tensors; a
# hostile recipe (``Linear(20000, 20000)`` without state, 584 bytes) asks for gigabytes.
MAX_UNSAVED_BYTES = 128 << 20


def _build(un: Unflattener, node: dict, state: dict | None) -> nn.Module:
    """Build on the meta device, check the file's state against it, then materialize only what it needs.

    On the meta device the constructor allocates nothing and its random init costs nothing;
    the file's tensors then replace the meta ones (``state`` None: the file holds none).
    Tensors still on meta afterwards (non-persistent buffers, tensor attributes, the
    weights of a module saved without state) are computed by running the constructor for
    real, only if they fit what is left of :data:`MAX_UNSAVED_BYTES` for this load.
    """
    memo = un.context.setdefault("objects", {})
    before = set(memo)
    module = _build_on_meta(un, node)
    if module is not None:
        if state is not None:
            load_module_state(un, node, module, state)  # a mismatch is reported before anything is allocated
        unsaved = _meta_bytes(module)
        if unsaved == 0:
            _follow_loaded_device(module, state or {})
            return module
        _spend_unsaved(un, node, unsaved)
    for key in set(memo) - before:  # objects decoded on meta are decoded again for real
        del memo[key]
    with torch.device(un.context["torch.default_device"]):
        module = _checked_module(un, node, decode_recipe(un, node["recipe"], class_hint=node.get("class")))
    if state is not None:
        load_module_state(un, node, module, state)
        _follow_loaded_device(module, state)
    return module


def _build_on_meta(un: Unflattener, node: dict) -> nn.Module | None:
    """The module the recipe builds, on the meta device; None if its constructor needs real values.

    That fallback (building for real) is left to classes the caller registered or
    trusted: a built-in torch class that fails on meta is refused, since its arguments
    come from the file and its size is unknown.
    """
    with torch.device("meta"):  # constructor arguments that are modules are built here too
        target, args, kwargs = decode_recipe(un, node["recipe"], build=False, class_hint=node.get("class"))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with torch.device("meta"):
                module = target(*args, **kwargs)
    except Exception as exc:
        if str(getattr(target, "__module__", "")).partition(".")[0] == "torch":
            raise CorruptCheckpointError(
                f"{un.source}: the recipe {node['recipe'].get('name')!r} at {node.get('path')} cannot be built with the "
                f"arguments the file gives ({type(exc).__name__}: {exc})",
                path=un.source, key=str(node.get("path")),
            ) from exc
        return None
    remember_recipe(module, target, args, kwargs)
    return _checked_module(un, node, module)


def _spend_unsaved(un: Unflattener, node: dict, nbytes: int) -> None:
    spent = un.context.get("torch.unsaved_bytes", 0) + nbytes
    if spent > MAX_UNSAVED_BYTES:
        raise CorruptCheckpointError(
            f"{un.source}: rebuilding {node.get('path')} ({node['recipe'].get('name')!r}) would allocate "
            f"{nbytes:,} bytes of tensors the file does not hold (weights saved without state, non-persistent "
            f"buffers); one load allocates at most {MAX_UNSAVED_BYTES >> 20} MiB of such tensors. Build the model "
            "yourself and restore its weights with ms.load_into(model, path)",
            path=un.source, key=str(node.get("path")),
        )
    un.context["torch.unsaved_bytes"] = spent


def _meta_bytes(module: nn.Module, depth: int = 4) -> int:
    """Bytes of the meta tensors reachable from ``module``: what building it for real would add."""
    seen: set[int] = set()
    total = 0

    def visit(value: Any, left: int) -> None:
        nonlocal total
        if id(value) in seen:
            return
        if isinstance(value, torch.Tensor):
            seen.add(id(value))
            if value.is_meta:
                total += value.numel() * value.element_size()
            return
        if left == 0 or isinstance(value, (nn.Module, type, str, bytes, int, float, bool)) or value is None:
            return
        seen.add(id(value))
        for item in _children(value):
            visit(item, left - 1)

    for sub in module.modules():
        for t in list(sub._parameters.values()) + list(sub._buffers.values()):
            if t is not None:
                visit(t, 0)
        for key, value in vars(sub).items():
            if key not in ("_parameters", "_buffers", "_modules"):
                visit(value, depth)
    return total


def _children(value: Any) -> list:
    """What a helper object, container or closure holds (where constructors keep caches)."""
    if isinstance(value, dict):
        return list(value.values())
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    if getattr(value, "__closure__", None):
        items = []
        for cell in value.__closure__:
            try:
                items.append(cell.cell_contents)
            except ValueError:
                pass
        return items
    if hasattr(value, "__dict__"):
        return list(vars(value).values())
    return []


def _note_parameter_leaves(fl: Flattener, state: dict, state_node: Any) -> None:
    names = fl.context.setdefault(PARAM_NAMES, {})
    items = state_node.get("dict") if isinstance(state_node, dict) else None
    if not isinstance(items, list):
        return
    for (key, value), (_, ref) in zip(state.items(), items):
        if isinstance(value, torch.Tensor) and isinstance(ref, dict) and isinstance(ref.get("tensor"), str):
            names.setdefault(id(value), ref["tensor"])


def load_module_state(un: Unflattener, node: dict, module: nn.Module, state: Any) -> None:
    """Assign a decoded state_dict to a freshly built module; mismatches name keys and shapes."""
    from ...load_into import LoadReport, Mismatch

    if not isinstance(state, dict):
        raise un.bad(node, "module state must be a dict")
    own = module.state_dict(keep_vars=True)
    report = LoadReport()
    for key, value in own.items():
        if key not in state:
            report.missing.append(key)
        elif isinstance(value, torch.Tensor):
            saved = state[key]
            _need_torch(un, saved, f"{node.get('path')}[{key!r}]")
            if tuple(saved.shape) != tuple(value.shape) or _dtype_class(saved) != _dtype_class(value):
                report.mismatched.append(Mismatch(key, tuple(saved.shape), _dt(saved), tuple(value.shape), _dt(value)))
    report.unexpected.extend(k for k in state if k not in own)
    if report.missing or report.unexpected or report.mismatched:
        raise IncompatibleStateError(
            f"{un.source}: {node.get('path')}: the recipe {node['recipe'].get('name')!r} builds a model whose state "
            f"does not match the file ({report.describe()}). The class's code changed since the file was saved; "
            "build the model yourself and restore what matches with ms.load_into(model, path, strict=False)",
            path=un.source, key=str(node.get("path")), report=report,
        )
    flags = {k: v.requires_grad for k, v in state.items() if isinstance(v, nn.Parameter)}
    module.load_state_dict(state, strict=True, assign=True)
    for key, flag in flags.items():
        state[key].requires_grad_(flag)


def _follow_loaded_device(module: nn.Module, state: dict) -> None:
    devices = {v.device for v in state.values() if isinstance(v, torch.Tensor)}
    if len(devices) == 1:
        (device,) = devices
        if device.type != "cpu":
            module.to(device)  # non-persistent buffers follow the loaded tensors


def _dt(t: torch.Tensor) -> str:
    return str(t.dtype).replace("torch.", "")


def _dtype_class(t: torch.Tensor) -> str:
    """bool, complex, float or int: a file may store weights in another precision, never another kind."""
    if t.dtype == torch.bool:
        return "bool"
    return "complex" if t.is_complex() else "float" if t.is_floating_point() else "int"


# -- saved state checked against a fresh object's own -------------------------------------------
#
# torch's load_state_dict of schedulers (and of the schedulers inside SequentialLR, and
# of callable objects in lr_lambdas) is ``self.__dict__.update(state)``, and an
# optimizer takes each saved param group wholesale: a file could replace ``sched.step``
# or a hyper-parameter with any object it can decode.  So the saved state is compared
# with the state of the object as built: only keys it has, with values of the kinds it
# has (numbers stay numbers, strings strings, tensors tensors, lists of them).

_PLAIN_SCALARS = (type(None), bool, int, float, str)
_MAX_STATE_DEPTH = 16


def _kind(value: Any) -> str:
    return type(value).__name__


def _plain(value: Any, depth: int = 0) -> bool:
    """Numbers, strings, None, tensors and lists/tuples of them: data that cannot act as code."""
    if type(value) in _PLAIN_SCALARS or type(value) in (torch.Tensor, nn.Parameter):
        return True
    if type(value) in (list, tuple) and depth < _MAX_STATE_DEPTH:
        return all(_plain(v, depth + 1) for v in value)
    return False


def _conformed(saved: Any, fresh: Any, where: str, depth: int = 0) -> Any:
    """``saved`` (from a file) where it has the kind of ``fresh`` (the object's own value); unknown keys dropped."""
    if depth > _MAX_STATE_DEPTH:
        raise StateMismatch(where, "state nested too deeply", "flat state")
    if isinstance(fresh, bool) or fresh is None or isinstance(fresh, str):
        ok = type(saved) is bool if isinstance(fresh, bool) else isinstance(saved, str) if isinstance(fresh, str) else _plain(saved)
    elif isinstance(fresh, (int, float)):
        ok = type(saved) in (int, float)
    elif isinstance(fresh, torch.Tensor):
        ok = isinstance(saved, torch.Tensor)
    elif isinstance(fresh, dict):
        if not isinstance(saved, dict):
            raise StateMismatch(where, _kind(saved), _kind(fresh))
        out = type(fresh)() if type(fresh) in (dict, collections.OrderedDict, collections.Counter) else {}
        for key, value in saved.items():
            if key in fresh and key != RECIPE_ATTR:
                out[key] = _conformed(value, fresh[key], f"{where}[{key!r}]", depth + 1)
        return out
    elif isinstance(fresh, (list, tuple)):
        if not isinstance(saved, (list, tuple)):
            raise StateMismatch(where, _kind(saved), _kind(fresh))
        items = [
            _conformed(v, fresh[min(i, len(fresh) - 1)], f"{where}[{i}]", depth + 1) if fresh else _plain_or_fail(v, f"{where}[{i}]")
            for i, v in enumerate(saved)
        ]
        return type(fresh)(items) if type(fresh) in (list, tuple) else items
    else:
        ok = False  # the object holds an object here (a function, the optimizer): nothing from a file replaces it
    if not ok:
        raise StateMismatch(where, _kind(saved), _kind(fresh))
    return saved


def _plain_or_fail(value: Any, where: str) -> Any:
    if not _plain(value):
        raise StateMismatch(where, _kind(value), "numbers, strings or tensors")
    return value


def _conformed_optimizer_state(opt: torch.optim.Optimizer, state: Any) -> dict:
    """Param groups: known keys with the kinds the optimizer has, others (a scheduler's initial_lr) plain data;
    per-parameter state: plain data (tensors, numbers, lists of them)."""
    if not isinstance(state, dict) or not isinstance(state.get("param_groups"), list) or not isinstance(state.get("state"), dict):
        raise StateMismatch("state", _kind(state), "an optimizer state_dict")
    fresh = opt.param_groups[0] if opt.param_groups else {}
    groups = []
    for i, group in enumerate(state["param_groups"]):
        if not isinstance(group, dict) or not isinstance(group.get("params"), list):
            raise StateMismatch(f"param_groups[{i}]", _kind(group), "a param group")
        checked = {"params": [_id_or_fail(p, f"param_groups[{i}]['params']") for p in group["params"]]}
        for key, value in group.items():
            if key == "params":
                continue
            where = f"param_groups[{i}][{key!r}]"
            checked[key] = _conformed(value, fresh[key], where) if key in fresh else _plain_or_fail(value, where)
        groups.append(checked)
    per_param = {}
    for key, entry in state["state"].items():
        if not isinstance(entry, dict):
            raise StateMismatch(f"state[{key!r}]", _kind(entry), "a dict of tensors")
        per_param[key] = {name: _plain_or_fail(value, f"state[{key!r}][{name!r}]") for name, value in entry.items()}
    return {"state": per_param, "param_groups": groups}


def _id_or_fail(value: Any, where: str) -> int:
    if type(value) is not int:
        raise StateMismatch(where, _kind(value), "parameter indices")
    return value


def conform_state(target: Any, state: Any) -> Any:
    """``state`` as ``target.load_state_dict`` may take it: checked against ``target``'s own state.

    Raises :class:`StateMismatch` (a ValueError) naming the first entry of the wrong kind.
    """
    if isinstance(target, torch.optim.Optimizer):
        return _conformed_optimizer_state(target, state)
    return _conformed(state, target.state_dict(), "state")


# -- optimizers -----------------------------------------------------------------------------------


def _constructor_names(cls: type) -> tuple[set[str], set[str]]:
    """(all keyword names, required names) of ``cls.__init__`` besides params/optimizer."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    names = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    required = {p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    return names, required


class OptimizerCodec:
    kinds = ("torch.optimizer",)

    def handles(self, tp: type) -> bool:
        return issubclass(tp, torch.optim.Optimizer)

    def encode(self, fl: Flattener, opt: torch.optim.Optimizer, path: tuple) -> dict:
        cls = type(opt)
        names, required = _constructor_names(cls)
        defaults = {k: v for k, v in opt.defaults.items() if k in names}
        lacking = sorted(required - set(defaults) - {"params"})

        def body(node: dict) -> None:
            if lacking:
                node["recipe"] = None
                node["why"] = f"its constructor needs {', '.join(lacking)}, which are not among its defaults"
            else:
                node["recipe"] = encode_recipe(fl, Recipe(cls, (), defaults), path + ("defaults",), _class_label(cls))
            node["params"] = None  # filled in once every module in the tree is known
            node["state"] = fl.encode(opt.state_dict(), path)
            fl.defer(lambda: node.__setitem__("params", _parameter_refs(fl, opt, path)))

        return encode_object(fl, opt, path, "torch.optimizer", body, with_state=True)

    def decode(self, un: Unflattener, node: dict) -> torch.optim.Optimizer:
        if node.get("recipe") is None:
            raise _no_recipe(un, node, "torch optimizer")
        align_loaded_tensors(un)
        cls, _, defaults = decode_recipe(un, node["recipe"], build=False, kind=OPTIMIZER_KIND)
        for key, value in defaults.items():  # hyper-parameters are data: they end up in every param group
            if not _plain(value):
                raise un.bad(node["recipe"], f"optimizer argument {key!r} must be numbers, strings or tensors, not {_kind(value)}")
        groups = node.get("params")
        if not isinstance(groups, list) or not all(isinstance(g, list) for g in groups):
            raise un.bad(node, "optimizer params must be a list of groups")
        params = [[un.decode(ref) for ref in group] for group in groups]
        for group in params:
            for p in group:
                _need_torch(un, p, f"{node.get('path')} parameter")
        state = un.decode(node["state"])
        try:
            opt = cls([{"params": group} for group in params], **defaults)
            opt.load_state_dict(conform_state(opt, state))
        except ModelsafeError:
            raise  # already names the file and what is wrong
        except (TypeError, ValueError, KeyError) as exc:
            raise _rebuild_failed(un, node, "optimizer", exc) from exc
        return opt


def _parameter_refs(fl: Flattener, opt: torch.optim.Optimizer, path: tuple) -> list:
    names = fl.context.get(PARAM_NAMES, {})
    groups = []
    for i, group in enumerate(opt.param_groups):
        refs = []
        for j, p in enumerate(group["params"]):
            leaf = names.get(id(p))
            refs.append({"tensor": leaf} if leaf is not None else fl.encode(p, path + ("params", i, j)))
        groups.append(refs)
    return groups


# -- LR schedulers --------------------------------------------------------------------------------

# constructor argument -> where its value lives, for arguments not stored under their own name
_SCHEDULER_SOURCES: dict[str, tuple[str, ...]] = {
    "milestones": ("milestones", "_milestones"),
    "anneal_strategy": ("_anneal_func_type", "anneal_strategy"),
    "base_lr": ("base_lrs",),
    "max_lr": ("max_lrs",),
    "min_lr": ("min_lrs",),
    "base_momentum": ("base_momentums",),
    "max_momentum": ("max_momentums",),
}
_GROUP_SOURCES = {"max_lr": "max_lr", "base_momentum": "base_momentum", "max_momentum": "max_momentum", "swa_lr": "swa_lr"}


def _callables_of(sched: Any) -> list[tuple[str, Any]]:
    out = [("lr_lambda", fn) for fn in getattr(sched, "lr_lambdas", ()) or ()]
    custom = getattr(sched, "_scale_fn_custom", None)
    if custom is not None:
        out.append(("scale_fn", custom))
    return out


def _refuse_callables(sched: Any, path: tuple) -> None:
    """Schedulers holding Python functions (LambdaLR, ...) cannot be stored: say so, clearly, at save."""
    label = _class_label(sched)
    for arg, fn in _callables_of(sched):
        if recipe_of(fn) is None:
            raise UnsupportedObjectError(
                f"cannot save {format_path(path)}: the {label} holds {arg}={getattr(fn, '__qualname__', fn)!r}, a Python "
                "callable, and modelsafe never stores code (loading it would run code from the file). Use a built-in "
                "scheduler (LinearLR, CosineAnnealingLR, SequentialLR, ...), make the callable an instance of an "
                "@ms.rebuildable class, or save scheduler.state_dict() and restore it with ms.load_into(scheduler, path)",
                key=format_path(path),
            )
    for i, child in enumerate(getattr(sched, "_schedulers", None) or ()):
        if isinstance(child, _SCHEDULER_BASE):
            _refuse_callables(child, path + ("_schedulers", i))


def _scheduler_kwargs(sched: Any, state: dict) -> tuple[dict | None, str]:
    """Constructor arguments read back from the scheduler, or (None, why not)."""
    cls = type(sched)
    label = _class_label(cls)
    kwargs: dict[str, Any] = {}
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in ("optimizer", "last_epoch", "verbose"):
            continue
        value: Any = _MISSING
        if p.name == "schedulers":
            value = list(getattr(sched, "_schedulers", None) or [])
        elif p.name == "lr_lambda":
            value = list(getattr(sched, "lr_lambdas", None) or [])
        elif p.name == "scale_fn":
            value = getattr(sched, "_scale_fn_custom", None)
        else:
            for source in _SCHEDULER_SOURCES.get(p.name, ()) + (p.name,):
                if source in state:
                    value = state[source]
                    break
            if value is _MISSING and p.name in _GROUP_SOURCES:
                groups = sched.optimizer.param_groups
                if all(_GROUP_SOURCES[p.name] in g for g in groups):
                    value = [g[_GROUP_SOURCES[p.name]] for g in groups]
        if value is _MISSING:
            if p.default is p.empty:
                return None, f"the constructor argument {p.name!r} of {label} cannot be read back from the scheduler"
            continue
        if isinstance(value, collections.Counter):
            value = sorted(value.elements())
        kwargs[p.name] = value
    return kwargs, ""


def _group_settings(opt: torch.optim.Optimizer) -> list[dict]:
    return [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]


def _restore_group_settings(opt: torch.optim.Optimizer, settings: list[dict]) -> None:
    for group, saved in zip(opt.param_groups, settings):
        for key in [k for k in group if k != "params" and k not in saved]:
            del group[key]
        group.update(saved)


class SchedulerCodec:
    kinds = ("torch.lr_scheduler",)

    def handles(self, tp: type) -> bool:
        return issubclass(tp, _SCHEDULER_BASE)

    def encode(self, fl: Flattener, sched: Any, path: tuple) -> dict:
        # a scheduler's state_dict is its __dict__, where @ms.rebuildable keeps the recipe: not state
        state = {k: v for k, v in sched.state_dict().items() if k != RECIPE_ATTR}
        label = _class_label(sched)
        recipe, why = recipe_of(sched), ""
        if recipe is None:
            _refuse_callables(sched, path)
            kwargs, why = _scheduler_kwargs(sched, state)
            recipe = None if kwargs is None else Recipe(type(sched), (), kwargs)
            if recipe is not None:
                why = _dry_run(recipe, path, label)
                recipe = None if why else recipe
        with_state = not in_recipe(fl)
        if recipe is None and not with_state:
            raise UnsupportedObjectError(f"the scheduler {label} has no recipe: {why}", key=format_path(path))

        def body(node: dict) -> None:
            node["optimizer"] = None  # decoded first; filled once the whole tree is known
            if recipe is None:
                node["recipe"] = None
                node["why"] = why
            else:
                node["recipe"] = encode_recipe(fl, recipe, path, label)
            if with_state:
                node["state"] = fl.encode(state, path)

            def bind() -> None:
                node["optimizer"] = _encode_outside_recipe(fl, sched.optimizer, path + ("optimizer",))

            fl.defer(bind)

        return encode_object(fl, sched, path, "torch.lr_scheduler", body, with_state=with_state)

    def decode(self, un: Unflattener, node: dict) -> Any:
        if node.get("recipe") is None:
            raise _no_recipe(un, node, "torch LR scheduler")
        align_loaded_tensors(un)
        opt = un.decode(node.get("optimizer"))
        if not isinstance(opt, torch.optim.Optimizer):
            raise un.bad(node, "a scheduler must refer to an optimizer")
        settings = _group_settings(opt)
        cls, args, kwargs = decode_recipe(un, node.get("recipe"), build=False, class_hint=node.get("class"), kind=SCHEDULER_KIND)
        given = any(a is opt for a in args) or any(v is opt for v in kwargs.values())  # an @ms.rebuildable scheduler
        if not given and "optimizer" in inspect.signature(cls.__init__).parameters:
            kwargs["optimizer"] = opt
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                sched = cls(*args, **kwargs)
                if "state" in node:
                    sched.load_state_dict(conform_state(sched, un.decode(node["state"])))
        except ModelsafeError:
            raise  # already names the file and what is wrong
        except (TypeError, ValueError, KeyError) as exc:
            raise _rebuild_failed(un, node, "scheduler", exc) from exc
        finally:
            _restore_group_settings(opt, settings)  # building a scheduler steps it; the file has the truth
        return sched


def _encode_outside_recipe(fl: Flattener, obj: Any, path: tuple) -> Any:
    from ...objects import _state

    st = _state(fl)
    depth, st.recipe_depth = st.recipe_depth, 0
    try:
        return fl.encode(obj, path)
    finally:
        st.recipe_depth = depth


# -- GradScaler ---------------------------------------------------------------------------------


class GradScalerCodec:
    kinds = ("torch.grad_scaler",)

    def handles(self, tp: type) -> bool:
        return issubclass(tp, torch.amp.GradScaler)

    def encode(self, fl: Flattener, scaler: torch.amp.GradScaler, path: tuple) -> dict:
        kwargs = {
            "device": scaler._device,
            "init_scale": float(scaler._init_scale),
            "growth_factor": float(scaler._growth_factor),
            "backoff_factor": float(scaler._backoff_factor),
            "growth_interval": int(scaler._growth_interval),
            "enabled": bool(scaler._enabled),
        }

        def body(node: dict) -> None:
            node["recipe"] = encode_recipe(fl, Recipe(torch.amp.GradScaler, (), kwargs), path, "torch.amp.GradScaler")
            node["state"] = fl.encode(scaler.state_dict(), path)

        return encode_object(fl, scaler, path, "torch.grad_scaler", body)

    def decode(self, un: Unflattener, node: dict) -> torch.amp.GradScaler:
        cls, args, kwargs = decode_recipe(un, node.get("recipe"), build=False, kind=SCALER_KIND)
        try:  # torch takes any value (a device of 5); the arguments must have the kinds of its defaults
            kwargs = _conformed(kwargs, _argument_defaults(torch.amp.GradScaler), "GradScaler arguments")
            if args or (kwargs.get("device") is not None and torch.device(kwargs["device"]).type != kwargs["device"]):
                raise StateMismatch("GradScaler arguments", "positional or unknown device arguments", "keywords")
        except (StateMismatch, RuntimeError) as exc:
            raise _rebuild_failed(un, node, "GradScaler", exc) from exc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a CUDA scaler loaded where there is no CUDA disables itself
            scaler = call_recipe(un, node["recipe"]["name"], cls, (), kwargs)
        state = un.decode(node.get("state"))
        if state and scaler.is_enabled():
            try:
                scaler.load_state_dict(conform_state(scaler, state))
            except (StateMismatch, KeyError) as exc:
                raise _rebuild_failed(un, node, "GradScaler", exc) from exc
        return scaler


def _argument_defaults(cls: type) -> dict:
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return {p.name: p.default for p in params if p.default is not p.empty}


# -- torch.Generator ----------------------------------------------------------------------------


class GeneratorCodec:
    kinds = ("torch.generator",)

    def handles(self, tp: type) -> bool:
        return issubclass(tp, torch.Generator)

    def encode(self, fl: Flattener, gen: torch.Generator, path: tuple) -> dict:
        def body(node: dict) -> None:
            node["device"] = str(gen.device)
            node["state"] = fl.encode(gen.get_state(), path)

        return encode_object(fl, gen, path, "torch.generator", body)

    def decode(self, un: Unflattener, node: dict) -> torch.Generator:
        device = node.get("device", "cpu")
        if not isinstance(device, str):
            raise un.bad(node, "generator device must be a string")
        state = un.decode(node.get("state"))
        _need_torch(un, state, f"{node.get('path')} state")
        try:
            gen = torch.Generator(device=device)
        except RuntimeError as exc:
            raise CorruptCheckpointError(
                f"{un.source}: {node.get('path')} is a torch.Generator on {device}, which this machine cannot create ({exc})",
                path=un.source,
            ) from exc
        # a fresh tensor: torch's set_state misreads a view that does not start its storage
        gen.set_state(state.detach().to("cpu", torch.uint8).clone(memory_format=torch.contiguous_format))
        return gen


CODECS = [ModuleCodec(), OptimizerCodec(), SchedulerCodec(), GradScalerCodec(), GeneratorCodec()]
