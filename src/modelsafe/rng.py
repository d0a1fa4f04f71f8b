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

``ms.Checkpoints`` records these states with every save (:meth:`RNGState.to_json`, in
the checkpoint manifest's ``rng`` block) and ``ck.load_into`` puts them back
(:func:`restore_json`), so a resumed run draws the same numbers as an uninterrupted one.

Bit generators are created only from a fixed list of numpy classes, never by a
name taken from the file.
"""

from __future__ import annotations

import base64
import binascii
import random
import sys
import warnings
from typing import Any

import numpy as np

from .errors import CorruptCheckpointError
from .objects import encode_object
from .tree import Flattener, Unflattener

__all__ = ["RNGState", "restore_json"]

_MT_WORDS = 624  # words of a Mersenne Twister state (Python's random and numpy's legacy generator)
_MAX_TORCH_STATE = 1 << 20  # bytes; torch's CPU state is 5056, a CUDA state 16
_MAX_CUDA_DEVICES = 1024

_BIT_GENERATORS = {name: getattr(np.random, name) for name in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")}


class RNGState:
    """The global RNG states of Python, numpy (legacy ``np.random``), torch CPU and CUDA.

    ``RNGState.capture()`` snapshots them; ``state.restore()`` puts them back.
    torch states are included when torch is imported; CUDA states when CUDA is
    initialised.  Restoring onto a machine with fewer CUDA devices restores the
    devices that exist; on a machine without CUDA the CUDA states are skipped with a
    warning (the CPU generators are still restored).
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
                    warnings.warn("the saved RNG state includes CUDA generators, but CUDA is not available here; "
                                  "only the CPU generators were restored", stacklevel=2)
                    return
                for device, state in enumerate(self.cuda[: torch.cuda.device_count()]):
                    torch.cuda.set_rng_state(_byte_tensor(state), device)

    def to_json(self) -> dict:
        """The states as plain JSON (the ``rng`` block of a checkpoint manifest); :func:`restore_json` reads it.

        >>> RNGState.capture().to_json()["numpy"]["bit_generator"]
        'MT19937'
        """
        block: dict[str, Any] = {}
        if self.python is not None:
            version, internal, gauss = self.python
            block["python"] = {"version": version, "state": list(internal), "gauss": gauss}
        if self.numpy is not None:
            state = self.numpy
            block["numpy"] = {"bit_generator": state["bit_generator"], "key": np.asarray(state["state"]["key"]).tolist(),
                              "pos": int(state["state"]["pos"]), "has_gauss": int(state["has_gauss"]),
                              "gauss": float(state["gauss"])}
        if self.torch is not None:
            block["torch"] = _b64(self.torch)
        if self.cuda:
            block["cuda"] = [_b64(state) for state in self.cuda]
        return block

    @classmethod
    def from_json(cls, block: Any, where: str) -> "RNGState":
        """Read what :meth:`to_json` wrote; every field is checked (CorruptCheckpointError naming ``where``)."""
        if not isinstance(block, dict) or not set(block) <= {"python", "numpy", "torch", "cuda"}:
            raise _bad(where, "it must be an object with python, numpy, torch and cuda entries")
        cuda = block.get("cuda")
        if cuda is not None and (not isinstance(cuda, list) or len(cuda) > _MAX_CUDA_DEVICES):
            raise _bad(where, "'cuda' must be a list of generator states")
        return cls(
            _python_from_json(block.get("python"), where),
            _numpy_from_json(block.get("numpy"), where),
            _bytes_from_json(block.get("torch"), where, "torch"),
            [_bytes_from_json(state, where, "cuda") for state in cuda] if cuda else None,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RNGState):
            return NotImplemented
        return _canonical(self.__dict__) == _canonical(other.__dict__)

    def __repr__(self) -> str:
        parts = [k for k in ("python", "numpy", "torch", "cuda") if getattr(self, k) is not None]
        return f"RNGState({', '.join(parts)})"


def restore_json(block: Any, where: str) -> None:
    """Set the global generators to the states of a checkpoint's ``rng`` block (``where`` names the checkpoint).

    A block that does not check out, or that a generator refuses, changes no generator.
    """
    saved = RNGState.from_json(block, where)
    before = RNGState.capture()
    try:
        saved.restore()
    except (RuntimeError, TypeError, ValueError) as exc:
        before.restore()
        raise _bad(where, f"a generator refused it ({exc})") from None


def _bad(where: str, why: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"{where}: the recorded RNG states (manifest 'rng') are not valid: {why}", path=where, key="rng")


def _is_words(value: Any, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(type(w) is int and 0 <= w < 1 << 32 for w in value))


def _python_from_json(entry: Any, where: str) -> tuple | None:
    if entry is None:
        return None
    if not (isinstance(entry, dict) and entry.get("version") == 3 and isinstance(entry.get("state"), list)
            and _is_words(entry["state"][:-1], _MT_WORDS) and _is_words(entry["state"][-1:], 1)
            and entry["state"][-1] <= _MT_WORDS and (entry.get("gauss") is None or type(entry["gauss"]) is float)):
        raise _bad(where, "'python' must hold version 3, 625 state words and gauss")
    return (3, tuple(entry["state"]), entry["gauss"])


def _numpy_from_json(entry: Any, where: str) -> dict | None:
    if entry is None:
        return None
    if not (isinstance(entry, dict) and entry.get("bit_generator") == "MT19937" and _is_words(entry.get("key"), _MT_WORDS)
            and type(entry.get("pos")) is int and 0 <= entry["pos"] <= _MT_WORDS and entry.get("has_gauss") in (0, 1)
            and type(entry.get("gauss")) in (int, float)):
        raise _bad(where, "'numpy' must hold an MT19937 key of 624 words, pos, has_gauss and gauss")
    return {"bit_generator": "MT19937", "state": {"key": np.array(entry["key"], dtype=np.uint32), "pos": entry["pos"]},
            "has_gauss": entry["has_gauss"], "gauss": float(entry["gauss"])}


def _bytes_from_json(entry: Any, where: str, what: str) -> np.ndarray | None:
    if entry is None:
        return None
    if not isinstance(entry, str) or len(entry) > _MAX_TORCH_STATE * 4 // 3 + 4:
        raise _bad(where, f"{what!r} must be a base64 string of at most {_MAX_TORCH_STATE} bytes")
    try:
        data = base64.b64decode(entry, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(where, f"{what!r} is not base64") from None
    return np.frombuffer(data, dtype=np.uint8).copy()


def _b64(state: Any) -> str:
    """A generator state (torch ByteTensor or numpy uint8 array) as base64 text."""
    array = state.numpy() if hasattr(state, "numpy") and not isinstance(state, np.ndarray) else np.asarray(state)
    return base64.b64encode(np.ascontiguousarray(array, dtype=np.uint8).tobytes()).decode("ascii")


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
