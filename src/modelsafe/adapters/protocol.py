"""The one protocol every framework package under ``modelsafe.adapters`` follows.

A framework package (``modelsafe.adapters.torch``, ``.numpy``, ``.tensorflow``, ``.jax``,
``.mxnet``) exposes one :class:`Framework` record named ``FRAMEWORK``.  The core
(tree, objects, recipes, load_into, async saves, RNG capture, convert) asks the
registry in :mod:`modelsafe.adapters` for these records and never names a framework.
Every part is optional: a framework with tensors only leaves the rest empty.

Adding a framework adds a package and one ``register_framework`` line, nothing else::

    register_framework("jax", "modelsafe.adapters.jax", type_roots=("jax", "jaxlib", "flax", "optax"),
                       kind_prefixes=("jax.", "flax.", "optax."), extra="jax")
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

__all__ = [
    "Framework",
    "LoadTarget",
    "Lowering",
    "RngSource",
    "StateMismatch",
    "TargetDefaults",
    "rng_sources",
]


class StateMismatch(ValueError):
    """Raised by :meth:`LoadTarget.conform` when saved state does not fit the target."""

    def __init__(self, where: str, found: str, expected: str) -> None:
        super().__init__(f"{where} holds {found} where the object has {expected}")
        self.where, self.found, self.expected = where, found, expected


class LoadTarget(Protocol):
    """How ``ms.load_into`` restores one kind of framework object in place.

    ``plan`` says how the core matches it against the file:

    * ``"module"``: tensors matched key by key (``named_state`` gives the target's keys;
      ``assign`` receives ``{key: value}`` of the keys that loaded);
    * ``"state"``: one saved state object as a whole (an optimizer, a scheduler);
      ``conform`` checks and adapts it, ``assign`` receives it;
    * ``"rng"``: a saved generator of the same type; ``assign`` receives it;
    * ``"tensor"``: one tensor; ``assign`` copies the saved value into it.
    """

    plan: str
    saved_kinds: tuple[str, ...]   # skeleton "object" kinds whose saved form fits this target
    framework: str | None          # framework= the saved tensors are loaded as before assign (None: as saved)
    strip_prefixes: tuple[str, ...]  # "module": key prefixes wrappers add (DDP's "module."), tried when all saved keys have one

    def handles(self, obj: Any) -> bool: ...
    def named_state(self, obj: Any) -> dict[str, Any]: ...          # "module": key -> current value
    def unwrap(self, obj: Any) -> Any | None: ...                   # "module": wrapped inner object (DDP, compile)
    def conform(self, obj: Any, state: Any) -> Any: ...             # "state": may raise StateMismatch
    def assign(self, obj: Any, value: Any) -> None: ...


class TargetDefaults:
    """Defaults for the :class:`LoadTarget` parts a plan does not use; a target inherits it
    and sets ``plan`` and defines ``handles`` / ``assign`` (and what else its plan needs)::

        class ArrayTarget(TargetDefaults):
            plan = "tensor"
            def handles(self, obj): return isinstance(obj, np.ndarray)
            def assign(self, obj, value): np.copyto(obj, value)
    """

    saved_kinds: tuple[str, ...] = ()
    strip_prefixes: tuple[str, ...] = ()
    framework: str | None = None

    def named_state(self, obj: Any) -> dict[str, Any]:
        return {}

    def unwrap(self, obj: Any) -> Any | None:
        return None

    def conform(self, obj: Any, state: Any) -> Any:
        return state


class RngSource(Protocol):
    """A framework's global random generators, for exact resume (the manifest's ``rng`` block).

    ``capture`` returns a JSON-able state (None when the generators are not in use);
    ``restore`` validates the whole state first and changes nothing when it raises
    (ValueError / TypeError saying what is wrong; the core names the checkpoint and
    rolls back every other generator).  A file may hold anything under ``name``.
    """

    name: str                        # key in the rng block ("torch", "cuda", "tensorflow")

    def capture(self) -> Any | None: ...
    def restore(self, state: Any, where: str) -> None: ...


@dataclass(frozen=True)
class Lowering:
    """convert: a value of another tool's file that ``ms.save`` cannot store, stored as a plain one."""

    matches: Callable[[Any], bool]
    lower: Callable[[Any], Any]
    description: str


@dataclass(frozen=True)
class Framework:
    """Everything modelsafe knows about one framework.

    ``tensors``: the :class:`~modelsafe.adapters.TensorAdapter` for its tensor types.
    ``codecs``: :class:`~modelsafe.objects.ObjectCodec` s for its objects (modules,
    optimizers, schedulers, generators); each declares the skeleton kinds it decodes.
    ``register_builtins``: registers its built-in recipe names (layers, optimizers);
    called once, the first time a name under one of the framework's type roots is
    looked up.  ``snapshot``: async saves call it with one tensor and a memo dict and
    get a private copy (None: the tensor adapter's ``host_bytes`` copy is used).
    ``load_targets``: what ``ms.load_into`` can restore in place.  ``rng``: its global
    generators, one source per key of the ``rng`` block (torch has "torch" and
    "cuda"; register those keys with ``rng_keys=``).  ``lowerings``: what convert
    stores in a plainer form.  ``format_tag``: the safetensors ``format`` metadata
    convert writes for files of this framework's tensors ("pt", "np", "tf", "flax").
    """

    name: str
    tensors: Any = None
    codecs: Sequence[Any] = ()
    register_builtins: Callable[[], None] | None = None
    snapshot: Callable[[Any, dict], Any] | None = None
    load_targets: Sequence[LoadTarget] = ()
    rng: RngSource | Sequence[RngSource] | None = None
    lowerings: Sequence[Lowering] = ()
    format_tag: str | None = None


def rng_sources(framework: Framework) -> tuple[RngSource, ...]:
    """The RNG sources of ``framework`` (its ``rng`` is one source, several, or None)."""
    rng = framework.rng
    if rng is None:
        return ()
    return tuple(rng) if isinstance(rng, (list, tuple)) else (rng,)
