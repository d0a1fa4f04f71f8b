"""Framework adapters: one module per framework, all speaking the same small protocol.

Adapters are found lazily by the top-level module of an object's type (or of any
class in its MRO), so ``import modelsafe`` imports no framework and saving numpy
arrays never imports torch.  A framework that is asked for but not installed
raises :class:`~modelsafe.errors.FrameworkNotInstalledError` with an install hint.

The protocol (see :class:`TensorAdapter`) is what ``tree`` and ``format`` need:
describe a tensor without copying it, give its bytes when they are written, and
turn a byte buffer back into tensors.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Hashable, Protocol, Sequence

import numpy as np

from ..errors import FrameworkNotInstalledError

__all__ = [
    "TensorInfo",
    "TensorSpec",
    "TensorAdapter",
    "adapter_for_type",
    "adapter_named",
    "known_frameworks",
    "register_adapter",
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


# framework name -> (adapter module, pip extra hint)
_ADAPTER_MODULES: dict[str, str] = {
    "numpy": "modelsafe.adapters.numpy",
    "torch": "modelsafe.adapters.torch",
    "tensorflow": "modelsafe.adapters.tensorflow",
}
# top-level module of a type -> framework name
_TYPE_ROOTS: dict[str, str] = {
    "numpy": "numpy",
    "torch": "torch",
    "tensorflow": "tensorflow",
    "keras": "tensorflow",
}
_INSTALL_HINTS: dict[str, str] = {
    "numpy": "pip install numpy",
    "torch": "pip install 'modelsafe[torch]'",
    "jax": "pip install jax",
    "tensorflow": "pip install 'modelsafe[tensorflow]'",
    "mxnet": "pip install mxnet",
}
_loaded: dict[str, TensorAdapter] = {}
_by_type: dict[type, TensorAdapter | None] = {}


def register_adapter(framework: str, module: str, *, type_roots: Sequence[str] = (), install_hint: str | None = None) -> None:
    """Register an adapter module for ``framework``, imported on first use.

    >>> register_adapter("numpy", "modelsafe.adapters.numpy", type_roots=["numpy"])
    """
    _ADAPTER_MODULES[framework] = module
    for root in type_roots:
        _TYPE_ROOTS[root] = framework
    if install_hint:
        _INSTALL_HINTS[framework] = install_hint
    _loaded.pop(framework, None)
    _by_type.clear()


def known_frameworks() -> list[str]:
    """The framework names ``framework=`` accepts (registered adapters, installed or not)."""
    return sorted(_ADAPTER_MODULES)


def adapter_named(framework: str) -> TensorAdapter:
    """The adapter for ``framework``; raises FrameworkNotInstalledError with a hint."""
    adapter = _loaded.get(framework)
    if adapter is not None:
        return adapter
    module_name = _ADAPTER_MODULES.get(framework)
    if module_name is None:
        known = ", ".join(sorted(_ADAPTER_MODULES))
        raise FrameworkNotInstalledError(f"unknown framework {framework!r}; modelsafe knows: {known}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        hint = _INSTALL_HINTS.get(framework, f"pip install {framework}")
        raise FrameworkNotInstalledError(
            f"this needs {framework}, which is not installed ({exc}); install it with: {hint}"
        ) from exc
    adapter = module.ADAPTER
    _loaded[framework] = adapter
    return adapter


def adapter_for_type(tp: type) -> TensorAdapter | None:
    """The adapter whose tensors have type ``tp``, or None; cached per type."""
    try:
        return _by_type[tp]
    except KeyError:
        pass
    found = None
    for cls in tp.__mro__:
        framework = _TYPE_ROOTS.get(cls.__module__.partition(".")[0])
        if framework is None:
            continue
        try:
            adapter = adapter_named(framework)
        except FrameworkNotInstalledError:
            continue
        if adapter.handles(tp):
            found = adapter
            break
    _by_type[tp] = found
    return found
