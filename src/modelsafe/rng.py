"""Random number generator states: save them, load them, resume bit-exactly.

Objects stored as themselves: ``random.Random``, ``numpy.random.Generator``,
``numpy.random.RandomState`` and ``torch.Generator`` (the latter in
:mod:`modelsafe.adapters.torch_objects`).  :class:`RNGState` captures the *global*
generators — Python ``random``, numpy's legacy ``np.random``, torch CPU and, when
CUDA is in use, every CUDA device — in one object::

    >>> import random, os, tempfile, modelsafe as ms
    >>> from modelsafe.rng import RNGState
    >>> p = os.path.join(tempfile.mkdtemp(), "rng.safetensors")
    >>> random.seed(7); ms.save({"rng": RNGState.capture()}, p)
    >>> first = random.random()
    >>> ms.load(p)["rng"].restore(); random.random() == first
    True

Bit generators are created only from a fixed list of numpy classes, never by a
name taken from the file.
"""

from __future__ import annotations

import random
import sys
from typing import Any

import numpy as np

from .objects import encode_object
from .tree import Flattener, Unflattener

__all__ = ["RNGState"]

_BIT_GENERATORS = {name: getattr(np.random, name) for name in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")}


class RNGState:
    """The global RNG states of Python, numpy (legacy ``np.random``), torch CPU and CUDA.

    ``RNGState.capture()`` snapshots them; ``state.restore()`` puts them back.
    torch states are included when torch is imported; CUDA states when CUDA is
    initialised.  Restoring onto a machine with fewer CUDA devices restores the
    devices that exist and raises for none.
    """

    def __init__(self, python: Any = None, numpy: Any = None, torch: Any = None, cuda: Any = None) -> None:
        self.python = python
        self.numpy = numpy
        self.torch = torch
        self.cuda = cuda

    @classmethod
    def capture(cls) -> "RNGState":
        torch_state = cuda_state = None
        torch = sys.modules.get("torch")
        if torch is not None:
            torch_state = torch.get_rng_state()
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                cuda_state = list(torch.cuda.get_rng_state_all())
        return cls(random.getstate(), np.random.get_state(legacy=False), torch_state, cuda_state)

    def restore(self) -> None:
        """Set the global generators to the captured states."""
        if self.python is not None:
            random.setstate(_python_state(self.python))
        if self.numpy is not None:
            np.random.set_state(self.numpy)
        if self.torch is not None or self.cuda:
            import torch

            if self.torch is not None:
                torch.set_rng_state(_byte_tensor(self.torch))
            if self.cuda:
                if not torch.cuda.is_available():
                    raise RuntimeError("the saved RNG state includes CUDA generators, but CUDA is not available here")
                for device, state in enumerate(self.cuda[: torch.cuda.device_count()]):
                    torch.cuda.set_rng_state(_byte_tensor(state), device)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RNGState):
            return NotImplemented
        return _canonical(self.__dict__) == _canonical(other.__dict__)

    def __repr__(self) -> str:
        parts = [k for k in ("python", "numpy", "torch", "cuda") if getattr(self, k) is not None]
        return f"RNGState({', '.join(parts)})"


def _byte_tensor(value: Any) -> Any:
    import torch

    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    # a fresh tensor: torch's set_state misreads a view that does not start its storage
    return value.detach().to("cpu", torch.uint8).clone(memory_format=torch.contiguous_format)


def _python_state(value: Any) -> tuple:
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


# -- codecs -----------------------------------------------------------------------------------


class RNGStateCodec:
    kinds = ("modelsafe.rng_state",)

    def handles(self, tp: type) -> bool:
        return tp is RNGState

    def encode(self, fl: Flattener, obj: RNGState, path: tuple) -> dict:
        def body(node: dict) -> None:
            node["state"] = fl.encode(
                {"python": obj.python, "numpy": obj.numpy, "torch": obj.torch, "cuda": obj.cuda}, path
            )

        return encode_object(fl, obj, path, "modelsafe.rng_state", body)

    def decode(self, un: Unflattener, node: dict) -> RNGState:
        state = un.decode(node.get("state"))
        if not isinstance(state, dict):
            raise un.bad(node, "an RNG state must hold a dict")
        return RNGState(state.get("python"), state.get("numpy"), state.get("torch"), state.get("cuda"))


class PythonRandomCodec:
    kinds = ("python.random",)

    def handles(self, tp: type) -> bool:
        return tp is random.Random

    def encode(self, fl: Flattener, obj: random.Random, path: tuple) -> dict:
        return encode_object(fl, obj, path, "python.random", lambda node: node.__setitem__("state", fl.encode(obj.getstate(), path)))

    def decode(self, un: Unflattener, node: dict) -> random.Random:
        rng = random.Random()
        try:
            rng.setstate(_python_state(un.decode(node.get("state"))))
        except (TypeError, ValueError) as exc:
            raise un.bad(node, f"not a random.Random state ({exc})") from None
        return rng


def _bit_generator(un: Unflattener, node: dict, state: Any) -> Any:
    name = state.get("bit_generator") if isinstance(state, dict) else None
    cls = _BIT_GENERATORS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise un.bad(node, f"unknown numpy bit generator {name!r}; known: {', '.join(_BIT_GENERATORS)}")
    bit_gen = cls()
    try:
        bit_gen.state = state
    except (TypeError, ValueError, KeyError) as exc:
        raise un.bad(node, f"not a {name} state ({exc})") from None
    return bit_gen


class NumpyGeneratorCodec:
    kinds = ("numpy.generator",)

    def handles(self, tp: type) -> bool:
        return tp is np.random.Generator

    def encode(self, fl: Flattener, obj: np.random.Generator, path: tuple) -> dict:
        return encode_object(
            fl, obj, path, "numpy.generator", lambda node: node.__setitem__("state", fl.encode(obj.bit_generator.state, path))
        )

    def decode(self, un: Unflattener, node: dict) -> np.random.Generator:
        return np.random.Generator(_bit_generator(un, node, un.decode(node.get("state"))))


class NumpyRandomStateCodec:
    kinds = ("numpy.random_state",)

    def handles(self, tp: type) -> bool:
        return tp is np.random.RandomState

    def encode(self, fl: Flattener, obj: np.random.RandomState, path: tuple) -> dict:
        return encode_object(
            fl, obj, path, "numpy.random_state", lambda node: node.__setitem__("state", fl.encode(obj.get_state(legacy=False), path))
        )

    def decode(self, un: Unflattener, node: dict) -> np.random.RandomState:
        state = un.decode(node.get("state"))
        rs = np.random.RandomState()
        try:
            rs.set_state(state)
        except (TypeError, ValueError, KeyError) as exc:
            raise un.bad(node, f"not a RandomState state ({exc})") from None
        return rs


CODECS = [RNGStateCodec(), PythonRandomCodec(), NumpyGeneratorCodec(), NumpyRandomStateCodec()]
