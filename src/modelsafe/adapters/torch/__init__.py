"""PyTorch: tensors, modules / optimizers / schedulers / GradScaler / Generators, async snapshot,
``load_into`` targets, global RNG and convert lowerings, as one :class:`~modelsafe.adapters.protocol.Framework`."""

from __future__ import annotations

import torch

from ..protocol import Framework, Lowering
from .load_targets import LOAD_TARGETS
from .objects import CODECS, register_builtins
from .rng import RNG
from .snapshot import snapshot
from .tensors import ADAPTER, torch_dtype

__all__ = ["FRAMEWORK", "ADAPTER", "torch_dtype"]


def _exactly(tp: type) -> object:
    return lambda value: type(value) is tp


LOWERINGS = (
    Lowering(_exactly(torch.Size), tuple, "torch.Size stored as a tuple"),
    Lowering(_exactly(torch.dtype), str, "torch.dtype stored as its name"),
    Lowering(_exactly(torch.device), str, "torch.device stored as its name"),
)

FRAMEWORK = Framework(
    name="torch",
    tensors=ADAPTER,
    codecs=CODECS,
    register_builtins=register_builtins,
    snapshot=snapshot,
    load_targets=LOAD_TARGETS,
    rng=RNG,
    lowerings=LOWERINGS,
    format_tag="pt",
)
