"""numpy: ndarrays and scalars, ``np.random`` generators, async snapshot, ``load_into`` targets and the
global RNG, as one :class:`~modelsafe.adapters.protocol.Framework`."""

from __future__ import annotations

from ..protocol import Framework
from .load_targets import LOAD_TARGETS
from .objects import CODECS
from .rng import RNG
from .snapshot import snapshot
from .tensors import ADAPTER, NumpyAdapter

__all__ = ["FRAMEWORK", "ADAPTER", "NumpyAdapter"]

FRAMEWORK = Framework(
    name="numpy",
    tensors=ADAPTER,
    codecs=CODECS,
    snapshot=snapshot,
    load_targets=LOAD_TARGETS,
    rng=RNG,
    format_tag="np",
)
