"""Class registry and safe name resolution.

A file names classes as ``"module:qualname"`` strings.  modelsafe turns such a
name back into a class only through:

1. the registry (``@ms.rebuildable``, ``ms.register``, built-in registrations),
   including aliases kept for classes that moved or were renamed;
2. modules the caller lists in ``trusted=`` (only those are ever imported).

Plain data containers (dataclasses and namedtuples) may also be found among
modules the program has already imported, because rebuilding them calls no code
of theirs (``object.__new__`` and attribute assignment only).
"""

from __future__ import annotations

import dataclasses
import importlib
import sys
from typing import Any, Callable, Iterable

from .errors import UnknownClassError

__all__ = ["register", "lookup", "registered_name", "find_data_class", "resolve"]

_REGISTRY: dict[str, Any] = {}          # stable name or alias -> class or factory
_NAMES: dict[Any, str] = {}             # class or factory -> stable name


def qualified_name(obj: Any) -> str:
    return f"{obj.__module__}:{obj.__qualname__}"


def register(cls_or_factory: Any = None, name: str | None = None, aliases: Iterable[str] = ()) -> Any:
    """Register a class or factory under a stable ``name`` (default ``module:qualname``).

    ``aliases`` are older names that should keep resolving to it (a class that moved).
    Usable as a plain call or as a decorator::

        >>> class Net: ...
        >>> _ = register(Net, name="examples.Net", aliases=["old_module:Net"])
        >>> lookup("old_module:Net") is Net
        True
    """
    if cls_or_factory is None:
        return lambda target: register(target, name=name, aliases=aliases)
    stable = name or qualified_name(cls_or_factory)
    for key in (stable, *aliases):
        _REGISTRY[key] = cls_or_factory
    # the qualified name also resolves, so files written before a rename keep loading
    _REGISTRY.setdefault(qualified_name(cls_or_factory), cls_or_factory)
    _NAMES[cls_or_factory] = stable
    return cls_or_factory


def registered_name(cls_or_factory: Any) -> str | None:
    """The stable name ``cls_or_factory`` was registered under, or None."""
    return _NAMES.get(cls_or_factory)


def lookup(name: str) -> Any | None:
    """The registered class or factory called ``name`` (or aliased so), or None."""
    return _REGISTRY.get(name)


def _split(name: str) -> tuple[str, str]:
    module, sep, qualname = name.partition(":")
    if not sep:
        module, _, qualname = name.rpartition(".")
    return module, qualname


def _attr_path(module: Any, qualname: str) -> Any | None:
    obj = module
    for part in qualname.split("."):
        if part.startswith("__") or not part:
            return None
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _is_trusted(module: str, trusted: Iterable[str]) -> bool:
    return any(module == t or module.startswith(t + ".") for t in trusted)


def resolve(name: str, trusted: Iterable[str] = (), *, source: Any = None) -> Any:
    """Resolve a recipe's class name through the registry or a trusted module.

    Raises UnknownClassError naming the class and what to do; never imports or calls
    anything for a name that is neither registered nor inside ``trusted``.
    """
    found = lookup(name) if isinstance(name, str) else None
    if found is not None:
        return found
    if isinstance(name, str):
        module, qualname = _split(name)
        if module and qualname and _is_trusted(module, trusted):
            try:
                mod = importlib.import_module(module)
            except ImportError as exc:
                raise UnknownClassError(
                    f"{source}: recipe names {name!r}, but trusted module {module!r} cannot be imported ({exc})",
                    path=source, key=name,
                ) from exc
            obj = _attr_path(mod, qualname)
            if obj is not None:
                return obj
    raise UnknownClassError(
        f"{source}: the file names class {name!r}, which is not registered. Nothing was imported or called. "
        "Decorate the class with @ms.rebuildable (add aliases=(...) if it moved), call ms.register(cls), "
        f"or pass trusted=[{_split(str(name))[0]!r}] if you trust that module",
        path=source, key=str(name),
    )


def find_data_class(name: Any, trusted: Iterable[str] = (), *, kind: str) -> type | None:
    """Find a dataclass or namedtuple class by name without running its code; None if unknown."""
    if not isinstance(name, str):
        return None
    candidate = lookup(name)
    if candidate is None:
        module, qualname = _split(name)
        mod = sys.modules.get(module)
        if mod is None and _is_trusted(module, trusted):
            try:
                mod = importlib.import_module(module)
            except ImportError:
                mod = None
        candidate = _attr_path(mod, qualname) if mod is not None else None
    if not isinstance(candidate, type):
        return None
    if kind == "dataclass" and dataclasses.is_dataclass(candidate):
        return candidate
    if kind == "namedtuple" and issubclass(candidate, tuple) and hasattr(candidate, "_fields"):
        return candidate
    return None
