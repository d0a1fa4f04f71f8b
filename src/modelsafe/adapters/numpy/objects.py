"""numpy's generators as objects in the tree: ``np.random.Generator`` and ``np.random.RandomState``.

Bit generators are created only from a fixed list of numpy classes, never by a
name taken from the file.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...objects import encode_object
from ...tree import Flattener, Unflattener

_BIT_GENERATORS = {name: getattr(np.random, name) for name in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")}


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


CODECS = (NumpyGeneratorCodec(), NumpyRandomStateCodec())
