"""What ``ms.load_into`` restores in place in numpy: generators and arrays."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..protocol import TargetDefaults


class _Target(TargetDefaults):
    framework: str | None = "numpy"


class GeneratorTarget(_Target):
    plan = "rng"
    saved_kinds = ("numpy.generator",)

    def handles(self, obj: Any) -> bool:
        return type(obj) is np.random.Generator

    def assign(self, obj: np.random.Generator, value: np.random.Generator) -> None:
        obj.bit_generator.state = value.bit_generator.state


class RandomStateTarget(_Target):
    plan = "rng"
    saved_kinds = ("numpy.random_state",)

    def handles(self, obj: Any) -> bool:
        return type(obj) is np.random.RandomState

    def assign(self, obj: np.random.RandomState, value: np.random.RandomState) -> None:
        obj.set_state(value.get_state())


class ArrayTarget(_Target):
    plan = "tensor"
    framework = None  # as saved: np.asarray takes any framework's CPU tensor

    def handles(self, obj: Any) -> bool:
        return isinstance(obj, np.ndarray)

    def assign(self, obj: np.ndarray, value: Any) -> None:
        np.copyto(obj, np.asarray(value), casting="unsafe")


LOAD_TARGETS = (GeneratorTarget(), RandomStateTarget(), ArrayTarget())
