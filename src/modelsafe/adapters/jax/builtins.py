"""Built-in registrations: Flax NNX Variable types and Optax's state records.

Optax states are namedtuples; registering them lets a file's record name
(``optax._src.transform:ScaleByAdamState``) resolve to the real class even before the
program imports Optax, while nothing a file names is ever imported.
"""

from __future__ import annotations

import importlib.util

from ...recipes import register


def register_builtins() -> None:
    """Register ``flax.nnx.<Variable type>`` and ``optax.<State>`` (each only if installed)."""
    if importlib.util.find_spec("flax") is not None:
        from flax import nnx

        for name, obj in vars(nnx).items():
            if isinstance(obj, type) and issubclass(obj, nnx.Variable) and not name.startswith("_"):
                register(obj, name=f"flax.nnx.{name}")
    if importlib.util.find_spec("optax") is not None:
        import optax

        for name, obj in vars(optax).items():
            if isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields") and not name.startswith("_"):
                register(obj, name=f"optax.{name}")
