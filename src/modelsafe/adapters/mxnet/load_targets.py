"""What ``ms.load_into`` restores in place in MXNet: Gluon Blocks, ParameterDicts, Trainers, arrays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mxnet as mx
import numpy as np
from mxnet import gluon

from ..protocol import TargetDefaults
from . import trainer as _trainer
from .blocks import KIND as BLOCK_KIND, as_mxnet, load_block_state, named_parameters


@dataclass(frozen=True)
class ParamMeta:
    """Shape and dtype of an initialized parameter, for key matching (no data is read)."""

    shape: tuple[int, ...]
    dtype: np.dtype


def _meta(param: gluon.Parameter) -> ParamMeta | None:
    """None for a parameter without data yet (a clone not initialized, or with deferred shapes): its saved
    value is then checked against the declared shape when it is assigned."""
    try:
        data = param.data()
    except (RuntimeError, mx.MXNetError, gluon.parameter.DeferredInitializationError):
        return None
    return ParamMeta(tuple(data.shape), np.dtype(data.dtype))


class _Target(TargetDefaults):
    framework = "mxnet"


class BlockTarget(_Target):
    """A Gluon Block: parameters matched by structured name ("0.weight"), as ``load_parameters`` does."""

    plan = "module"
    saved_kinds = (BLOCK_KIND,)

    def handles(self, obj: Any) -> bool:
        return isinstance(obj, gluon.Block)

    def named_state(self, obj: gluon.Block) -> dict[str, Any]:
        return {name: _meta(p) for name, p in named_parameters(obj).items()}

    def assign(self, obj: gluon.Block, value: dict[str, Any]) -> None:
        load_block_state(obj, value, where=type(obj).__name__, strict=False)


class ParameterDictTarget(_Target):
    """``block.collect_params()``: parameters matched by their full names ("dense0_weight")."""

    plan = "module"
    saved_kinds = ("mxnet.parameters",)

    def handles(self, obj: Any) -> bool:
        return isinstance(obj, gluon.ParameterDict)

    def named_state(self, obj: gluon.ParameterDict) -> dict[str, Any]:
        return {name: _meta(p) for name, p in obj.items()}

    def assign(self, obj: gluon.ParameterDict, value: dict[str, Any]) -> None:
        load_block_state(_AsBlock(obj), value, where="ParameterDict", strict=False)


class _AsBlock:
    """A ParameterDict seen through ``named_parameters`` (its own names)."""

    def __init__(self, params: gluon.ParameterDict) -> None:
        self.params = params

    def _collect_params_with_prefix(self) -> dict:
        return dict(self.params.items())


class TrainerTarget(_Target):
    """A ``gluon.Trainer``: takes a saved trainer state as a whole."""

    plan = "state"
    saved_kinds = (_trainer.KIND,)

    def handles(self, obj: Any) -> bool:
        return isinstance(obj, gluon.Trainer)

    def conform(self, obj: gluon.Trainer, state: Any) -> Any:
        return _trainer.conform(obj, state)

    def assign(self, obj: gluon.Trainer, value: Any) -> None:
        _trainer.assign(obj, value)


class ArrayTarget(_Target):
    """An MXNet array: the saved value is copied into it."""

    plan = "tensor"

    def handles(self, obj: Any) -> bool:
        return isinstance(obj, mx.nd.NDArray)

    def assign(self, obj: mx.nd.NDArray, value: Any) -> None:
        obj[...] = as_mxnet(value).as_in_context(obj.ctx)


LOAD_TARGETS = (BlockTarget(), ParameterDictTarget(), TrainerTarget(), ArrayTarget())
