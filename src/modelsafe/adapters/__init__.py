"""Framework adapters: one package per framework, all speaking the protocol of :mod:`.protocol`.

Each framework package exposes a :class:`~.protocol.Framework` record ``FRAMEWORK`` and
is registered below with one :func:`register_framework` line (as fsspec's
``known_implementations``).  Packages are imported lazily, found by the top-level
module of an object's type (or of any class in its MRO) or by a skeleton kind's
prefix, so ``import modelsafe`` imports no framework and saving numpy
arrays never imports torch.  A framework that is asked for but not installed
raises :class:`~modelsafe.errors.FrameworkNotInstalledError` with an install hint.

The protocol (see :class:`TensorAdapter`) is what ``tree`` and ``format`` need:
describe a tensor without copying it, give its bytes when they are written, and
turn a byte buffer back into tensors.
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass, field
from typing import Any, Hashable, Protocol, Sequence

import numpy as np

from ..errors import FrameworkNotInstalledError
from .protocol import Framework

__all__ = [
    "TensorInfo",
    "TensorSpec",
    "TensorAdapter",
    "Framework",
    "adapter_for_type",
    "adapter_named",
    "framework_for_kind",
    "framework_for_type",
    "framework_named",
    "format_tag",
    "imported_frameworks",
    "known_frameworks",
    "register_framework",
    "unregister_framework",
]


@dataclass
class TensorInfo:
    """What the writer needs to know about a tensor before writing its bytes."""

    dtype: str                      # logical dtype name (see format.dtypes)
    shape: tuple[int, ...]
    identity: Hashable | None = None  # equal for tensors that are the same memory view
    attrs: dict[str, Any] = field(default_factory=dict)  # JSON, restored by the same adapter
    storage: Hashable | None = None   # equal for tensors viewing the same memory in any way (views, slices)
    view: tuple[int, tuple[int, ...]] | None = None  # (offset, strides) in elements within that memory


@dataclass
class TensorSpec:
    """Where one tensor lies in a byte buffer, and what it is."""

    offset: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # the tensor's name in the file, for errors


class TensorAdapter(Protocol):
    """What every framework adapter provides."""

    framework: str

    def handles(self, tp: type) -> bool:
        """True if objects of type ``tp`` are tensors of this framework."""

    def describe(self, obj: Any) -> TensorInfo:
        """Dtype, shape and identity of ``obj``, without copying its data."""

    def host_bytes(self, obj: Any) -> memoryview:
        """C-contiguous little-endian CPU bytes of ``obj`` (a copy only when needed)."""

    def from_buffer(self, base: np.ndarray, specs: Sequence[TensorSpec], options: "LoadOptions") -> list:
        """Tensors viewing (or copied from) the uint8 array ``base`` at ``specs``."""

    def view_of(self, base: Any, offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> Any:
        """A view of contiguous tensor ``base``'s memory (offset and strides in elements); optional."""


@dataclass
class LoadOptions:
    map_location: Any = None
    copy: bool = False  # True when base is a transient buffer the tensors must not keep


@dataclass(frozen=True)
class _Entry:
    name: str
    module: str
    type_roots: tuple[str, ...]
    kind_prefixes: tuple[str, ...]
    rng_keys: tuple[str, ...]
    extra: str | None


_REGISTRY: dict[str, _Entry] = {}
_by_root: dict[str, str] = {}          # top-level module of a type -> framework name
_loaded: dict[str, Framework] = {}
_by_type: dict[type, tuple[Framework, ...]] = {}
_adapter_by_type: dict[type, Any] = {}


def register_framework(
    name: str, module: str, *, type_roots: Sequence[str] = (), kind_prefixes: Sequence[str] = (),
    extra: str | None = None, rng_keys: Sequence[str] | None = None,
) -> None:
    """Register the framework package ``module`` (exposing ``FRAMEWORK``), imported on first use.

    ``type_roots``: top-level modules whose types belong to it (``"torch"``);
    ``kind_prefixes``: prefixes of the skeleton object kinds its codecs write
    (``"torch."``); ``extra``: the pip extra that installs it; ``rng_keys``: the keys
    its RNG sources own in a checkpoint's ``rng`` block (default: its name).

    >>> register_framework("numpy", "modelsafe.adapters.numpy", type_roots=("numpy",), kind_prefixes=("numpy.",))
    """
    _REGISTRY[name] = _Entry(name, module, tuple(type_roots) or (name,), tuple(kind_prefixes),
                             tuple(rng_keys) if rng_keys is not None else (name,), extra)
    for root in _REGISTRY[name].type_roots:
        _by_root[root] = name
    _loaded.pop(name, None)
    _by_type.clear()
    _adapter_by_type.clear()


def unregister_framework(name: str) -> None:
    """Forget framework ``name`` (tests that register a stand-in framework clean up with it)."""
    entry = _REGISTRY.pop(name, None)
    for root in entry.type_roots if entry is not None else ():
        if _by_root.get(root) == name:
            del _by_root[root]
    _loaded.pop(name, None)
    _by_type.clear()
    _adapter_by_type.clear()


# -- the frameworks modelsafe knows (one line each; the package is imported on first use) ----------
register_framework("numpy", "modelsafe.adapters.numpy", type_roots=("numpy",), kind_prefixes=("numpy.",))
register_framework("torch", "modelsafe.adapters.torch", type_roots=("torch",), kind_prefixes=("torch.",),
                   extra="torch", rng_keys=("torch", "cuda"))
register_framework("mxnet", "modelsafe.adapters.mxnet", type_roots=("mxnet",), kind_prefixes=("mxnet.",), extra="mxnet")
register_framework("jax", "modelsafe.adapters.jax", type_roots=("jax", "jaxlib", "flax", "optax"),
                   kind_prefixes=("jax.", "flax.", "optax."), extra="jax")
register_framework("tensorflow", "modelsafe.adapters.tensorflow", type_roots=("tensorflow", "keras", "tf_keras"),
                   kind_prefixes=("keras.", "tensorflow."), extra="tensorflow", rng_keys=("keras",))


def format_tag(name: str | None) -> str | None:
    """The safetensors ``format`` tag (``"pt"``) of registered framework ``name``; None when it has none.

    >>> format_tag("numpy")
    'np'
    """
    if name not in _REGISTRY:
        return None
    try:
        return framework_named(name).format_tag
    except FrameworkNotInstalledError:  # a file of a framework this machine lacks is copied as is
        return None


def known_frameworks() -> list[str]:
    """The framework names ``framework=`` accepts (registered frameworks, installed or not)."""
    return sorted(_REGISTRY)


def install_hint(name: str) -> str:
    """The command that installs framework ``name`` for modelsafe."""
    entry = _REGISTRY.get(name)
    extra = entry.extra if entry is not None else None
    return f"pip install 'modelsafe[{extra}]'" if extra else f"pip install {name}"


def framework_named(name: str) -> Framework:
    """The :class:`Framework` record of ``name``; raises FrameworkNotInstalledError with an install hint.

    >>> framework_named("numpy").name
    'numpy'
    """
    found = _loaded.get(name)
    if found is not None:
        return found
    entry = _REGISTRY.get(name)
    if entry is None:
        raise FrameworkNotInstalledError(f"unknown framework {name!r}; modelsafe knows: {', '.join(known_frameworks())}")
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        raise FrameworkNotInstalledError(
            f"this needs {name}, which is not installed ({exc}); install it with: {install_hint(name)}"
        ) from exc
    found = _loaded[name] = module.FRAMEWORK
    return found


def framework_for_root(module_name: str) -> str | None:
    """The name of the framework whose types live under ``module_name``'s top-level module, or None."""
    return _by_root.get(module_name.partition(".")[0])


def frameworks_for_type(tp: type) -> tuple[Framework, ...]:
    """The installed frameworks ``tp`` belongs to (by the top-level modules of its MRO, in MRO order); cached."""
    try:
        return _by_type[tp]
    except KeyError:
        pass
    found: list[Framework] = []
    for cls in tp.__mro__:
        name = framework_for_root(cls.__module__ or "")
        if name is None or any(f.name == name for f in found):
            continue
        try:
            found.append(framework_named(name))
        except FrameworkNotInstalledError:
            continue
    _by_type[tp] = result = tuple(found)
    return result


def framework_for_type(tp: type) -> Framework | None:
    """The first framework ``tp`` belongs to, or None (``torch.nn.Linear`` -> torch)."""
    found = frameworks_for_type(tp)
    return found[0] if found else None


def framework_for_kind(kind: str) -> Framework | None:
    """The framework whose codecs write skeleton kind ``kind`` ("torch.module" -> torch), or None.

    Raises FrameworkNotInstalledError when that framework is registered but not installed.
    """
    for entry in _REGISTRY.values():
        if any(kind.startswith(prefix) for prefix in entry.kind_prefixes):
            return framework_named(entry.name)
    return None


def framework_for_rng_key(key: str) -> str | None:
    """The name of the framework whose RNG sources own ``key`` of the ``rng`` block, or None."""
    return next((e.name for e in _REGISTRY.values() if key in e.rng_keys), None)


def imported_frameworks() -> list[Framework]:
    """The registered frameworks already imported by this process (never imports one)."""
    out = []
    for entry in _REGISTRY.values():
        if any(root in sys.modules for root in entry.type_roots):
            try:
                out.append(framework_named(entry.name))
            except FrameworkNotInstalledError:
                continue
    return out


def adapter_named(framework: str) -> TensorAdapter:
    """The tensor adapter of ``framework``; raises FrameworkNotInstalledError with a hint."""
    adapter = framework_named(framework).tensors
    if adapter is None:
        raise FrameworkNotInstalledError(f"framework {framework!r} has no tensors modelsafe can load")
    return adapter


def adapter_for_type(tp: type) -> TensorAdapter | None:
    """The tensor adapter whose tensors have type ``tp``, or None; cached per type."""
    try:
        return _adapter_by_type[tp]
    except KeyError:
        pass
    found = next((f.tensors for f in frameworks_for_type(tp) if f.tensors is not None and f.tensors.handles(tp)), None)
    _adapter_by_type[tp] = found
    return found

