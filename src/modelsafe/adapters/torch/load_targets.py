"""What ``ms.load_into`` restores in place in torch: modules, optimizers, schedulers, GradScalers, Generators, tensors."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..protocol import StateMismatch, TargetDefaults
from .objects import _wrapped, conform_state


class ModuleTarget(TargetDefaults):
    """A module: tensors matched key by key against its ``state_dict``."""

    plan = "module"
    saved_kinds = ("torch.module",)
    framework = "torch"
    strip_prefixes = ("_orig_mod.", "module.")  # torch.compile, DataParallel / DDP

    def handles(self, obj: Any) -> bool:
        return isinstance(obj, nn.Module)

    def named_state(self, obj: nn.Module) -> dict[str, Any]:
        return obj.state_dict(keep_vars=True)

    def unwrap(self, obj: nn.Module) -> nn.Module | None:
        return _wrapped(obj)

    def assign(self, obj: nn.Module, value: dict[str, Any]) -> None:
        obj.load_state_dict(value, strict=False)


class StateTarget(TargetDefaults):
    """An object restored from one saved ``state_dict`` as a whole (optimizer, scheduler, GradScaler)."""

    plan = "state"
    framework = "torch"

    def __init__(self, cls: type, kind: str) -> None:
        self.cls, self.saved_kinds = cls, (kind,)

    def handles(self, obj: Any) -> bool:
        return isinstance(obj, self.cls)

    def conform(self, obj: Any, state: Any) -> Any:
        if isinstance(obj, torch.optim.Optimizer):
            _check_param_groups(obj, state)
        return conform_state(obj, state)  # load_state_dict updates __dict__: only what the target has

    def assign(self, obj: Any, value: Any) -> None:
        obj.load_state_dict(value)


def _check_param_groups(opt: torch.optim.Optimizer, state: Any) -> None:
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if (
        not isinstance(groups, list)
        or not isinstance(state.get("state"), dict)
        or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups)
    ):
        raise StateMismatch("", "not an optimizer state_dict", type(opt).__name__)
    saved = [len(g["params"]) for g in groups]
    mine = [len(g["params"]) for g in opt.param_groups]
    if saved != mine:
        raise StateMismatch("", f"param groups of sizes {saved}", f"param groups of sizes {mine}")


class GeneratorTarget(TargetDefaults):
    """A ``torch.Generator``: takes the state of a saved generator."""

    plan = "rng"
    saved_kinds = ("torch.generator",)
    framework = "torch"

    def handles(self, obj: Any) -> bool:
        return isinstance(obj, torch.Generator)

    def assign(self, obj: torch.Generator, value: torch.Generator) -> None:
        obj.set_state(value.get_state())


class TensorTarget(TargetDefaults):
    """A tensor: the saved value is copied into it."""

    plan = "tensor"
    framework = "torch"

    def handles(self, obj: Any) -> bool:
        return isinstance(obj, torch.Tensor)

    def assign(self, obj: torch.Tensor, value: Any) -> None:
        with torch.no_grad():
            obj.copy_(value if isinstance(value, torch.Tensor) else torch.as_tensor(value))


LOAD_TARGETS = (
    ModuleTarget(),
    StateTarget(torch.optim.Optimizer, "torch.optimizer"),
    StateTarget(torch.optim.lr_scheduler.LRScheduler, "torch.lr_scheduler"),
    StateTarget(torch.amp.GradScaler, "torch.grad_scaler"),
    GeneratorTarget(),
    TensorTarget(),
)
