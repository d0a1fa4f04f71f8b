"""Random number generator states: save them, load them, resume bit-exactly.

Objects stored as themselves: ``random.Random`` (here) and each framework's
generators (``numpy.random.Generator``, ``torch.Generator``: codecs of their
framework packages).  :class:`RNGState` captures the *global* generators — Python
``random`` and, through each imported framework's :class:`~modelsafe.adapters.protocol.RngSource`,
numpy's legacy ``np.random``, torch CPU and every CUDA device in use — in one object::

    >>> import random, os, tempfile, modelsafe as ms
    >>> from modelsafe.rng import RNGState
    >>> p = os.path.join(tempfile.mkdtemp(), "rng.safetensors")
    >>> random.seed(7); ms.save({"rng": RNGState.capture()}, p)
    >>> first = random.random()
    >>> ms.load(p)["rng"].restore(); random.random() == first
    True

``ms.Checkpoints`` records these states with every save (:meth:`RNGState.to_json`, in
the checkpoint manifest's ``rng`` block: ``{"python": ..., "numpy": ..., "torch": ...,
"cuda": [...]}``, one entry per source) and ``ck.load_into`` puts them back
(:func:`restore_json`), so a resumed run draws the same numbers as an uninterrupted one.
A framework is never imported to capture its generators: only those already imported are.
"""

from __future__ import annotations

import base64
import random
from typing import Any

from .adapters import framework_for_rng_key, framework_named, imported_frameworks
from .adapters.protocol import RngSource, TargetDefaults, rng_sources
from .errors import CorruptCheckpointError, ModelsafeError
from .objects import encode_object
from .tree import Flattener, Unflattener

__all__ = ["RNGState", "restore_json"]

_MT_WORDS = 624  # words of a Mersenne Twister state (Python's random)
_MAX_KEYS = 64


class RNGState:
    """The global RNG states of Python and of every imported framework (numpy, torch CPU and CUDA, ...).

    ``RNGState.capture()`` snapshots them; ``state.restore()`` puts them back.  The
    states are kept as JSON, one entry per generator (``state.python``,
    ``state.numpy``, ``state.torch``, ``state.cuda``).  Restoring onto a machine with
    fewer CUDA devices restores the devices that exist; on a machine without CUDA the
    CUDA states are skipped with a warning (the CPU generators are still restored).
    """

    def __init__(self, states: dict[str, Any] | None = None, /, **by_key: Any) -> None:
        self.states = {k: v for k, v in {**(states or {}), **by_key}.items() if v is not None}

    def __getattr__(self, key: str) -> Any:
        states = self.__dict__.get("states")
        if states is not None and key in states:
            return states[key]
        raise AttributeError(key)

    @classmethod
    def capture(cls) -> "RNGState":
        states: dict[str, Any] = {"python": _python_json(random.getstate())}
        for framework in imported_frameworks():
            for source in rng_sources(framework):
                state = source.capture()
                if state is not None:
                    states[source.name] = state
        return cls(states)

    def restore(self, where: str = "RNGState") -> None:
        """Set the global generators to the captured states (Python first, then each framework's)."""
        for key, state in self.states.items():
            if key == "python":
                random.setstate(_python_from_json(state))
            else:
                _source(key, where).restore(state, where)

    def to_json(self) -> dict:
        """The states as plain JSON (the ``rng`` block of a checkpoint manifest); :func:`restore_json` reads it.

        >>> RNGState.capture().to_json()["numpy"]["bit_generator"]
        'MT19937'
        """
        return dict(self.states)

    @classmethod
    def from_json(cls, block: Any, where: str) -> "RNGState":
        """Read what :meth:`to_json` wrote; entries are checked when restored (CorruptCheckpointError naming ``where``)."""
        if not isinstance(block, dict) or len(block) > _MAX_KEYS or not all(isinstance(k, str) for k in block):
            raise _bad(where, "it must be an object with one entry per generator (python, numpy, torch, cuda, ...)")
        for key in block:
            if key != "python" and framework_for_rng_key(key) is None:
                raise _bad(where, f"{key!r} names no generator this modelsafe knows")
        return cls(block)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RNGState):
            return NotImplemented
        return self.states == other.states

    def __repr__(self) -> str:
        return f"RNGState({', '.join(self.states)})"


def _source(key: str, where: str) -> RngSource:
    name = framework_for_rng_key(key)
    if name is not None:
        for source in rng_sources(framework_named(name)):
            if source.name == key:
                return source
    raise _bad(where, f"{key!r} names no generator this modelsafe knows")


def restore_json(block: Any, where: str) -> None:
    """Set the global generators to the states of a checkpoint's ``rng`` block (``where`` names the checkpoint).

    A block that does not check out, or that a generator refuses, changes no generator.
    """
    saved = RNGState.from_json(block, where)
    before = RNGState.capture()
    try:
        saved.restore(where)
    except ModelsafeError:
        before.restore()
        raise
    except Exception as exc:  # a source's check, or the framework refusing the state
        before.restore()
        raise _bad(where, f"a generator refused it ({exc})") from None


def _bad(where: str, why: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"{where}: the recorded RNG states (manifest 'rng') are not valid: {why}", path=where, key="rng")


def _is_words(value: Any, count: int) -> bool:
    return (isinstance(value, list) and len(value) == count
            and all(type(w) is int and 0 <= w < 1 << 32 for w in value))


def _python_json(state: tuple) -> dict:
    version, internal, gauss = state
    return {"version": version, "state": list(internal), "gauss": gauss}


def _python_from_json(entry: Any) -> tuple:
    if not (isinstance(entry, dict) and entry.get("version") == 3 and isinstance(entry.get("state"), list)
            and _is_words(entry["state"][:-1], _MT_WORDS) and _is_words(entry["state"][-1:], 1)
            and entry["state"][-1] <= _MT_WORDS and (entry.get("gauss") is None or type(entry["gauss"]) is float)):
        raise ValueError("'python' must hold version 3, 625 state words and gauss")
    return (3, tuple(entry["state"]), entry["gauss"])


def _python_state(value: Any) -> tuple:
    version, internal, gauss = value
    return (version, tuple(internal), gauss)


def _legacy_states(state: dict) -> dict:
    """The states an RNGState object saved by an older modelsafe holds (raw generator states), as JSON."""
    out: dict[str, Any] = {}
    for key, value in state.items():
        if value is None or not isinstance(key, str):
            continue
        if key == "python" and isinstance(value, (tuple, list)) and len(value) == 3:
            value = _python_json(value)
        elif isinstance(value, dict) and isinstance(value.get("state"), dict):  # numpy's get_state(legacy=False)
            value = {"bit_generator": value.get("bit_generator"), "key": _tolist(value["state"].get("key")),
                     "pos": int(value["state"].get("pos", -1)), "has_gauss": int(value.get("has_gauss", -1)),
                     "gauss": float(value.get("gauss", 0.0))}
        elif isinstance(value, (list, tuple)):
            value = [_b64(v) for v in value]
        elif hasattr(value, "shape"):
            value = _b64(value)
        out[key] = value
    return out


def _tolist(value: Any) -> Any:
    return value.tolist() if hasattr(value, "tolist") else value


def _b64(state: Any) -> Any:
    """A raw generator state (a uint8 tensor of any framework) as base64 text; anything else as it is."""
    if not hasattr(state, "shape"):
        return state
    import numpy as np  # numpy is modelsafe's own dependency; np.asarray reads any CPU tensor

    return base64.b64encode(np.ascontiguousarray(np.asarray(state), dtype=np.uint8).tobytes()).decode("ascii")


# -- codecs -----------------------------------------------------------------------------------


class RNGStateCodec:
    kinds = ("modelsafe.rng_state",)

    def handles(self, tp: type) -> bool:
        return tp is RNGState

    def encode(self, fl: Flattener, obj: RNGState, path: tuple) -> dict:
        return encode_object(fl, obj, path, "modelsafe.rng_state", lambda node: node.__setitem__("state", fl.encode(obj.states, path)))

    def decode(self, un: Unflattener, node: dict) -> RNGState:
        state = un.decode(node.get("state"))
        if not isinstance(state, dict):
            raise un.bad(node, "an RNG state must hold a dict")
        return RNGState(_legacy_states(state))


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


CODECS = [RNGStateCodec(), PythonRandomCodec()]


# -- load_into targets: the generators modelsafe itself knows ---------------------------------


class _RngTarget(TargetDefaults):
    plan = "rng"

    def __init__(self, tp: type, kind: str, assign: Any) -> None:
        self.tp, self.saved_kinds, self._assign = tp, (kind,), assign

    def handles(self, obj: Any) -> bool:
        return type(obj) is self.tp

    def assign(self, obj: Any, value: Any) -> None:
        self._assign(obj, value)


LOAD_TARGETS = (
    _RngTarget(random.Random, "python.random", lambda target, saved: target.setstate(saved.getstate())),
    _RngTarget(RNGState, "modelsafe.rng_state", lambda target, saved: target.__dict__.update(saved.__dict__)),
)
