"""Keras' global seed generator for the checkpoint ``rng`` block (key ``"keras"``).

``keras.random`` draws without an explicit seed (initializers of layers built after a
resume, ``keras.random.uniform(...)``) advance one global ``SeedGenerator``; its state is
two integers.  Keras creates it lazily and offers no public getter, so it is read
through Keras' global state and left alone when it does not exist yet.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from keras.src.backend.common import global_state
from keras.src.random.seed_generator import global_seed_generator

_INT64 = (-(1 << 63), (1 << 63) - 1)


class KerasRng:
    name = "keras"

    def capture(self) -> list[int] | None:
        generator = global_state.get_global_attribute("global_seed_generator")
        if generator is None:
            return None
        return [int(v) for v in np.asarray(generator.state.numpy()).reshape(-1)]

    def restore(self, state: Any, where: str) -> None:
        if not (isinstance(state, list) and len(state) == 2 and all(
            type(v) is int and _INT64[0] <= v <= _INT64[1] for v in state
        )):
            raise ValueError("'keras' must be the two integers of Keras' global seed generator")
        generator = global_seed_generator()
        generator.state.assign(np.asarray(state, dtype=generator.state.dtype))


RNG = (KerasRng(),)
