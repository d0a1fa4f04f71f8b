"""JAX, Flax and Optax: arrays of every dtype, Linen/NNX parameters, NNX modules, Optax states.

>>> import jax.numpy as jnp, tempfile, os, modelsafe as ms
>>> p = os.path.join(tempfile.mkdtemp(), "w.safetensors")
>>> ms.save({"w": jnp.arange(3.0)}, p)
>>> ms.load(p)["w"]
Array([0., 1., 2.], dtype=float32)

Optax states are namedtuples: the tree stores them as records, and they come back as
the real Optax classes (registered here; nothing a file names is imported).  JAX has no
global random generator (keys are values you pass around), so there is no RNG state
to capture for exact resume: save your key (``jax.random.key_data(key)``) or your
model's ``nnx.Rngs`` with the rest of the state.
"""

from __future__ import annotations

import importlib.util

from ...recipes import ensure_builtins
from ..protocol import Framework
from .builtins import register_builtins
from .targets import LOAD_TARGETS
from .tensors import ADAPTER, snapshot

if importlib.util.find_spec("flax") is not None:  # Flax is optional: arrays and Optax states need only jax
    from .flax_objects import CODECS
else:  # pragma: no cover - the jax extra installs flax
    CODECS = ()

FRAMEWORK = Framework(
    name="jax",
    tensors=ADAPTER,
    codecs=CODECS,
    register_builtins=register_builtins,
    snapshot=snapshot,
    load_targets=LOAD_TARGETS,
    format_tag="flax",
)

__all__ = ["ADAPTER", "CODECS", "FRAMEWORK"]

# Records (Optax states) are found by name in the registry only, without asking a framework
# for its built-ins (recipes.find_data_class): register them as soon as jax is in use, so a
# state comes back as the real Optax classes even before the program imports Optax.
ensure_builtins(FRAMEWORK)
