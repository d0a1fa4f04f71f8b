"""Write the golden files of format 1.0 (run once; the files are committed and never regenerated).

    python tests/golden/make_golden.py tests/golden

tests/test_golden.py asserts that every later modelsafe still loads these files to
exactly the values below.  Do not re-run this to "fix" a failing golden test: a
golden file that stops loading is a compatibility break to fix in the reader.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import sys
from typing import Any

import ml_dtypes
import numpy as np
import torch

import modelsafe as ms

Point = collections.namedtuple("Point", "x y")


@dataclasses.dataclass
class Config:
    lr: float
    layers: Any


TORCH_DTYPES = [
    "bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64",
    "float16", "bfloat16", "float32", "float64",
    "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
    "complex32", "complex64", "complex128",
]


def pattern(dtype: torch.dtype, count: int) -> torch.Tensor:
    """``count`` elements whose bytes are 0, 1, 2, ... (0/1 for bool)."""
    nbytes = count * dtype.itemsize
    raw = torch.arange(nbytes, dtype=torch.int64).remainder(256 if dtype != torch.bool else 2).to(torch.uint8)
    return raw.view(dtype)


def build() -> dict:
    linear = torch.nn.Linear(3, 2)
    with torch.no_grad():
        linear.weight.copy_(torch.tensor([[0.5, -1.0, 2.0], [0.25, 0.0, -0.125]]))
        linear.bias.copy_(torch.tensor([1.0, -1.0]))
    shared = torch.tensor([1.0, 2.0, 3.0])
    return {
        "dtypes": {name: pattern(getattr(torch, name), 4) for name in TORCH_DTYPES},
        "floats32": torch.tensor([1.5, -0.0, float("inf"), float("-inf"), float("nan"), 3.0e38]),
        "bf16": torch.tensor([1.0, -2.5, 0.0078125], dtype=torch.bfloat16),
        "scalar": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 3, dtype=torch.float16),
        "transposed": torch.arange(6, dtype=torch.int32).reshape(2, 3).t(),
        "tied": [shared, shared],
        "param": torch.nn.Parameter(torch.tensor([0.5, 0.25]), requires_grad=False),
        "grad": torch.tensor([2.0], requires_grad=True),
        "state_dict": linear.state_dict(),
        "numpy": {
            "f64": np.array([[1.0, 2.0], [3.0, 4.0]]),
            "i8": np.array([-128, 0, 127], dtype=np.int8),
            "bf16": np.array([0.5, -4.0], dtype=ml_dtypes.bfloat16),
            "e4m3": np.array([1.0, -0.5], dtype=ml_dtypes.float8_e4m3fn),
            "scalar": np.float32(2.5),
            "big_endian": np.array([1, 256], dtype=">i4"),
            "bool": np.array([[True], [False]]),
        },
        "containers": {
            "tuple": (1, "two", (3.0,)),
            "list": [None, True, False],
            "point": Point(x=1, y=[2, 3]),
            "config": Config(lr=0.001, layers=(4, 8)),
            "set": {3, 1, 2},
            "frozenset": frozenset({"a"}),
            "ordered": collections.OrderedDict([("z", 1), ("a", 2)]),
            "empty": [{}, [], ()],
        },
        7: "int key",
        -3: {2**60: "big int key"},
        "scalars": {
            "big": 2**64 + 1,
            "neg_big": -(2**53) - 1,
            "safe": 2**53,
            "nan": float("nan"),
            "inf": float("inf"),
            "ninf": float("-inf"),
            "negzero": -0.0,
            "tiny": 5e-324,
            "pi": 3.141592653589793,
            "text": "héllo wörld ✓ 日本 🎉",
            "empty_text": "",
            "bytes": b"\x00\x01\xfe\xff",
            "bytearray": bytearray(b"ba"),
        },
    }


def main(directory: str) -> None:
    ms.save(build(), os.path.join(directory, "v1.0-tree.safetensors"), metadata={"epoch": 7, "note": "golden"})
    ms.save({"number": 1 + 2j, "plain": [1, 2]}, os.path.join(directory, "v1.0-pickle.safetensors"), allow_pickle=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__)))
