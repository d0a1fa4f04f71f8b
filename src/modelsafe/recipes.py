"""Class registry and safe name resolution.

A file names classes as ``"module:qualname"`` strings.  modelsafe turns such a
name back into a class only through:

1. the registry (``@ms.rebuildable``, ``ms.register``, built-in registrations),
   including aliases kept for classes that moved or were renamed;
2. modules the caller lists in ``trusted=`` (only those are ever imported).

Plain data containers (dataclasses and namedtuples) may also be found among
modules the program has already imported, because rebuilding them calls no code
of theirs (``object.__new__`` and attribute assignment only).

A *recipe* is how an object was made: the stable name of its class (or factory) and
the constructor arguments.  ``@rebuildable`` records it whenever an instance is
constructed; ``build(cls, *args, **kwargs)`` constructs any class and records it.
Built-in registrations (torch.nn layers, torch.optim, lr schedulers) are made lazily,
the first time a name under ``torch.`` is looked up or a torch object is saved.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

from .arguments import check_names, check_optional_name
from .errors import FrameworkNotInstalledError, InvalidArgumentError, UnknownClassError

__all__ = [
    "Recipe",
    "rebuildable",
    "build",
    "recipe_of",
    "register",
    "register_provider",
    "lookup",
    "registered_name",
    "find_data_class",
    "resolve",
]

RECIPE_ATTR = "_modelsafe_recipe"

_REGISTRY: dict[str, Any] = {}          # stable name or alias -> class or factory
_NAMES: dict[Any, str] = {}             # class or factory -> stable name


def qualified_name(obj: Any) -> str:
    """``module:qualname`` of a class or function: the name files record when none is registered."""
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
    if isinstance(aliases, str):
        aliases = (aliases,)
    check_optional_name(name, call="ms.register", name="name", example="'nets.MLP'")
    aliases = check_names(aliases, call="ms.register", name="aliases", example="('old.module:MLP',)")
    if cls_or_factory is None:
        return lambda target: register(target, name=name, aliases=aliases)
    if not callable(cls_or_factory):
        raise InvalidArgumentError(f"ms.register takes a class or factory function, not {cls_or_factory!r}")
    stable = name or qualified_name(cls_or_factory)
    for key in (stable, *aliases):
        _REGISTRY[key] = cls_or_factory
    # the qualified name also resolves, so files written before a rename keep loading
    _REGISTRY.setdefault(qualified_name(cls_or_factory), cls_or_factory)
    _NAMES[cls_or_factory] = stable
    objects = sys.modules.get("modelsafe.objects")
    if objects is not None and isinstance(cls_or_factory, type):
        objects.forget_type(cls_or_factory)  # it may have been met (and found unsupported) before
    return cls_or_factory


@dataclass
class Recipe:
    """How an object was made: ``target(*args, **kwargs)``; ``target`` is a class or factory."""

    target: Any
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The name written to files: the registered stable name, else ``module:qualname``."""
        return registered_name(self.target) or qualified_name(self.target)


def recipe_of(obj: Any) -> Recipe | None:
    """The recipe recorded for ``obj`` by ``@rebuildable`` or :func:`build`, or None."""
    try:
        found = object.__getattribute__(obj, "__dict__").get(RECIPE_ATTR)
    except AttributeError:
        return None
    return found if isinstance(found, Recipe) else None


def attach_recipe(obj: Any, recipe: Recipe) -> None:
    try:
        object.__setattr__(obj, RECIPE_ATTR, recipe)
    except (AttributeError, TypeError) as exc:
        raise InvalidArgumentError(
            f"cannot remember how {type(obj).__qualname__} was built: its instances take no attributes ({exc})"
        ) from None


def rebuildable(cls: type | None = None, *, name: str | None = None, aliases: Iterable[str] = ()) -> Any:
    """Class decorator: register ``cls`` and record its constructor arguments on every instance.

    Saved instances carry a *recipe* (stable class name + arguments), so ``ms.load``
    rebuilds them without your code needing the arguments.  Arguments may be JSON
    values, tensors, other rebuildable objects, and registered classes.  ``name`` is a
    stable name that survives moving the class; ``aliases`` are names it had before.

    >>> import modelsafe as ms
    >>> @ms.rebuildable(name="docs.Scale", aliases=("old.place:Scale",))
    ... class Scale:
    ...     def __init__(self, factor, *, bias=0.0):
    ...         self.factor, self.bias = factor, bias
    >>> s = Scale(3, bias=1.0)
    >>> recipe_of(s).name, recipe_of(s).args, recipe_of(s).kwargs
    ('docs.Scale', (3,), {'bias': 1.0})
    """
    check_optional_name(name, call="@ms.rebuildable", name="name", example="'nets.MLP'")
    if cls is None:
        return lambda target: rebuildable(target, name=name, aliases=aliases)
    if not isinstance(cls, type):
        raise InvalidArgumentError(f"@rebuildable decorates classes; for a factory function use ms.register({cls!r}) and ms.build")
    if getattr(cls, "__dictoffset__", 1) == 0:
        raise InvalidArgumentError(
            f"@rebuildable cannot record recipes on {cls.__qualname__}: its instances have __slots__ and no __dict__; "
            "add '__dict__' to __slots__, or register it with ms.register and make instances with ms.build"
        )
    register(cls, name=name, aliases=aliases)
    if "__init__" in cls.__dict__ and getattr(cls.__dict__["__init__"], "__modelsafe_wraps__", None) is cls:
        return cls
    original = cls.__init__

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        # only the class actually instantiated records; super().__init__ calls of bases do not
        if type(self) is cls:
            attach_recipe(self, Recipe(cls, tuple(args), dict(kwargs)))

    __init__.__modelsafe_wraps__ = cls  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[misc]
    return cls


def build(cls: Any, *args: Any, **kwargs: Any) -> Any:
    """Construct ``cls(*args, **kwargs)`` and remember the recipe, for classes you cannot decorate.

    ``cls`` may also be a registered factory function.  The loading side must know
    the class: registered (``ms.register``, built-ins such as ``torch.nn.Linear``) or in
    a module passed as ``trusted=``.

    >>> import collections, modelsafe as ms
    >>> c = ms.build(collections.Counter, "abca")
    >>> recipe_of(c).args
    ('abca',)
    """
    if not callable(cls):
        raise InvalidArgumentError(f"ms.build(cls, *args, **kwargs): cls must be a class or registered factory function, not {cls!r}")
    obj = cls(*args, **kwargs)
    attach_recipe(obj, Recipe(cls, tuple(args), dict(kwargs)))
    from .objects import note_built_type  # late: objects builds on this module

    note_built_type(type(obj))
    return obj


# top-level module of a name -> modelsafe module that registers that framework's built-ins
_PROVIDERS: dict[str, str] = {"torch": "modelsafe.adapters.torch_objects"}
_PROVIDED: set[str] = set()


def register_provider(root: str, module: str) -> None:
    """Lazily import ``module`` (a modelsafe module registering built-ins) for names under ``root``."""
    _PROVIDERS[root] = module


def _load_provider(name: str) -> bool:
    root = name.replace(":", ".").partition(".")[0]
    module = _PROVIDERS.get(root)
    if module is None or root in _PROVIDED:
        return False
    _PROVIDED.add(root)
    try:
        importlib.import_module(module)
    except ImportError as exc:
        _PROVIDED.discard(root)
        raise FrameworkNotInstalledError(
            f"the file names {name!r}, a {root} class, but {root} is not installed ({exc}); "
            f"install it with: pip install 'modelsafe[{root}]'"
        ) from exc
    return True


def registered_name(cls_or_factory: Any) -> str | None:
    """The stable name ``cls_or_factory`` was registered under, or None."""
    return _NAMES.get(cls_or_factory)


def lookup(name: str) -> Any | None:
    """The registered class or factory called ``name`` (or aliased so), or None."""
    found = _REGISTRY.get(name)
    if found is None and isinstance(name, str):
        try:
            if _load_provider(name):
                found = _REGISTRY.get(name)
        except FrameworkNotInstalledError:
            return None  # resolve() says which framework is missing
    return found


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
    if isinstance(name, str):
        _load_provider(name)  # a built-in name whose framework is missing: FrameworkNotInstalledError says so
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
