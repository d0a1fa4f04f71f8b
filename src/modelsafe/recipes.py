"""Class registry and safe name resolution.

A file names classes as ``"module:qualname"`` strings.  modelsafe turns such a
name back into a class only through:

1. the registry (``@ms.rebuildable``, ``ms.register``, built-in registrations),
   including aliases kept for classes that moved or were renamed;
2. packages the caller lists in ``trusted=`` (only those are ever imported), and
   there only classes defined in them, never functions or what they import.

Plain data containers (dataclasses and namedtuples) may also be found among
modules the program has already imported (defined exactly where the file says),
because rebuilding them calls no code of theirs (``object.__new__`` and attribute
assignment only).  :func:`_find_class` is the one place a name becomes a class.

A *recipe* is how an object was made: the stable name of its class (or factory) and
the constructor arguments.  ``@rebuildable`` records it whenever an instance is
constructed; ``build(cls, *args, **kwargs)`` constructs any class and records it.
A framework's built-in registrations (its layers, optimizers, schedulers) are made
lazily by its ``Framework.register_builtins``, the first time a name under one of its
type roots is looked up or one of its objects is saved.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .adapters import framework_for_root, framework_named
from .arguments import check_names, check_optional_name
from .errors import FrameworkNotInstalledError, InvalidArgumentError, UnknownClassError

__all__ = [
    "Recipe",
    "rebuildable",
    "build",
    "recipe_of",
    "register",
    "lookup",
    "registered_name",
    "find_data_class",
    "resolve",
]

RECIPE_ATTR = "_modelsafe_recipe"

_REGISTRY: dict[str, Any] = {}          # stable name or alias -> class or factory
_NAMES: dict[Any, str] = {}             # class or factory -> stable name
_BUILT_TYPES: set[type] = set()         # types of objects made by build(): they carry recipes
_generation = 0                         # bumped by every registration; caches keyed on types compare it


def generation() -> int:
    """A number that changes whenever a class is registered or built: caches of per-type answers compare it.

    >>> before = generation(); _ = register(type("G", (), {}), name="docs.G"); generation() > before
    True
    """
    return _generation


def _changed() -> None:
    global _generation
    _generation += 1


def is_built_type(tp: type) -> bool:
    """True when instances of ``tp`` were made by :func:`build` (so they may carry a recipe)."""
    return tp in _BUILT_TYPES


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
    _changed()  # it may have been met (and found unsupported) before
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
    if type(obj) not in _BUILT_TYPES:
        _BUILT_TYPES.add(type(obj))
        _changed()
    return obj


_PROVIDED: set[str] = set()  # frameworks whose built-in recipes are registered


def ensure_builtins(framework: Any) -> None:
    """Register the built-in recipe names of ``framework`` (a Framework record), once."""
    if framework.name not in _PROVIDED:
        _PROVIDED.add(framework.name)
        if framework.register_builtins is not None:
            framework.register_builtins()


def _load_provider(name: str) -> bool:
    """Register the built-ins of the framework ``name`` lies under ("torch.nn.Linear" -> torch); True if it was new."""
    framework = framework_for_root(name.replace(":", "."))
    if framework is None or framework in _PROVIDED:
        return False
    try:
        record = framework_named(framework)
    except FrameworkNotInstalledError as exc:
        raise FrameworkNotInstalledError(f"the file names {name!r}, a {framework} class; {exc}") from exc
    ensure_builtins(record)
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


def _is_trusted(module: str, trusted: Iterable[str]) -> bool:
    return any(isinstance(t, str) and t and (module == t or module.startswith(t + ".")) for t in trusted)


def _defined_class(module: Any, qualname: str, defined_in: Callable[[str], bool]) -> type | None:
    """The class at ``qualname`` inside ``module``, found through namespaces only; None otherwise.

    Each step reads a namespace (``vars()``), never ``getattr``: a module's ``__getattr__``
    can import submodules (``torch._dynamo``, ``numpy.testing``) and a descriptor can run
    code.  Every step must be a class whose ``__module__`` satisfies ``defined_in`` and
    whose ``__qualname__`` is the path walked so far: a function, a module, or a class
    merely imported into the namespace (``from subprocess import Popen``) is never reached.
    """
    obj: Any = module
    parts = qualname.split(".")
    for i, part in enumerate(parts):
        if not part.isidentifier() or part.startswith("__"):
            return None
        obj = _namespace(obj).get(part)
        if not isinstance(obj, type) or obj.__qualname__ != ".".join(parts[: i + 1]):
            return None
        if not (isinstance(obj.__module__, str) and defined_in(obj.__module__)):
            return None
    return obj


def _namespace(obj: Any) -> dict:
    """``vars(obj)`` for a module or class, read past any ``__getattribute__`` (a lazy module's loads it)."""
    if issubclass(type(obj), type):
        return type.__dict__["__dict__"].__get__(obj)
    try:
        found = object.__getattribute__(obj, "__dict__")
    except AttributeError:
        return {}
    return found if isinstance(found, dict) else {}


def _find_class(name: str, trusted: Iterable[str], *, already_imported: bool) -> type | None:
    """The one door from a name in a file to a class outside the registry.

    A module the file names is imported only if the caller trusts it; there any class
    defined under a trusted package is found.  With ``already_imported`` (records,
    whose code never runs), modules the program has imported are searched too, for a
    class defined in exactly the module named.
    """
    module, qualname = _split(name)
    if not module or not qualname:
        return None
    trusted = tuple(trusted)
    if _is_trusted(module, trusted):
        mod = sys.modules.get(module) or importlib.import_module(module)  # ImportError: the caller names the module
        return _defined_class(mod, qualname, lambda m: _is_trusted(m, trusted))
    mod = sys.modules.get(module) if already_imported else None
    return None if mod is None else _defined_class(mod, qualname, lambda m: m == module)


def _trust_advice(name: Any) -> str:
    module = _split(str(name))[0] or str(name)
    return (
        f"or pass trusted=[{module!r}] if you trust that module: modelsafe then imports it and may construct "
        "classes defined in it with arguments from the file (never functions, never classes it merely imports)"
    )


def resolve(name: str, trusted: Iterable[str] = (), *, source: Any = None) -> Any:
    """Resolve a recipe's class name through the registry or a trusted module.

    Registered names and aliases give what was registered (class or factory).  A
    trusted module gives only classes defined in a trusted package (see
    docs/recipes.md, "Security model").  Raises UnknownClassError naming the class and
    what to do; never imports or calls anything for a name that is neither registered
    nor inside ``trusted``.
    """
    if not isinstance(name, str):
        raise UnknownClassError(f"{source}: a recipe names {name!r}, which is not a class name", path=source, key=str(name))
    found = lookup(name)
    if found is not None:
        return found
    try:
        found = _find_class(name, trusted, already_imported=False)
    except ImportError as exc:
        raise UnknownClassError(
            f"{source}: recipe names {name!r}, but trusted module {_split(name)[0]!r} cannot be imported ({exc})",
            path=source, key=name,
        ) from exc
    if found is not None:
        return found
    _load_provider(name)  # a built-in name whose framework is missing: FrameworkNotInstalledError says so
    raise UnknownClassError(
        f"{source}: the file names class {name!r}, which is not registered. Nothing was imported or called. "
        "Decorate the class with @ms.rebuildable (add aliases=(...) if it moved), call ms.register(cls), "
        + _trust_advice(name),
        path=source, key=name,
    )


def find_data_class(name: Any, trusted: Iterable[str] = (), *, kind: str) -> type | None:
    """Find a dataclass or namedtuple class by name without running its code; None if unknown.

    Looked for in the registry, in modules the caller trusts, and in modules the
    program has already imported (a class defined exactly there); nothing else is
    imported, whatever the name says.
    """
    if not isinstance(name, str):
        return None
    candidate = _REGISTRY.get(name)  # registered names only: no built-in provider is imported for a record
    if candidate is None:
        try:
            candidate = _find_class(name, trusted, already_imported=True)
        except ImportError:
            candidate = None
    if not isinstance(candidate, type):
        return None
    if kind == "dataclass" and dataclasses.is_dataclass(candidate) and _plain_fields(candidate):
        return candidate
    if kind == "namedtuple" and issubclass(candidate, tuple) and isinstance(_class_attr(candidate, "_fields"), tuple):
        return candidate
    return None


def _class_attr(cls: type, name: str) -> Any:
    """``cls.name`` read from the namespaces of its MRO (no descriptor or metaclass code runs); None if absent."""
    for klass in type.__dict__["__mro__"].__get__(cls):
        namespace = _namespace(klass)
        if name in namespace:
            return namespace[name]
    return None


def _plain_fields(cls: type) -> bool:
    """True if setting each field on an instance stores it and runs no code of the class.

    Slots are member descriptors; any other data descriptor (a property) would run code.
    """
    for f in dataclasses.fields(cls):
        attr = _class_attr(cls, f.name)
        if hasattr(type(attr), "__set__") and type(attr).__name__ != "member_descriptor":
            return False
    return True
