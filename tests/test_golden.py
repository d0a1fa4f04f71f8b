"""Golden files of format 1.0 (written by tests/golden/make_golden.py, committed, never
regenerated): every later modelsafe must load them to exactly these values."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import struct
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
import torch
from safetensors import safe_open

import modelsafe as ms

from treecheck import tensor_bytes

pytestmark = pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")

GOLDEN = Path(__file__).parent / "golden"
TREE = GOLDEN / "v1.0-tree.safetensors"
PICKLE = GOLDEN / "v1.0-pickle.safetensors"

# The files must be the originals: a "fixed" golden file proves nothing.
SHA256 = {
    TREE: "e60e71fcacef54805c247d17620461bf29b6122e87d4aa08206e3b44f4024b18",
    PICKLE: "8335c28f4690067abf7300ef40d2a3add29464757ebfb87118ca867f48dcb60f",
}

ITEMSIZE = {
    "bool": 1, "uint8": 1, "uint16": 2, "uint32": 4, "uint64": 8, "int8": 1, "int16": 2, "int32": 4, "int64": 8,
    "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "float8_e4m3fn": 1, "float8_e5m2": 1,
    "float8_e4m3fnuz": 1, "float8_e5m2fnuz": 1, "float8_e8m0fnu": 1, "complex32": 4, "complex64": 8, "complex128": 16,
}


@pytest.fixture(scope="module")
def tree():
    return ms.load(TREE)


def bits(x: float) -> bytes:
    return struct.pack("<d", x)


@pytest.mark.parametrize("path", [TREE, PICKLE], ids=lambda p: p.name)
def test_golden_files_are_the_originals(path):
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA256[path]


def test_every_torch_dtype_bit_exact(tree):
    dtypes = tree["dtypes"]
    assert list(dtypes) == list(ITEMSIZE)
    for name, size in ITEMSIZE.items():
        t = dtypes[name]
        assert type(t) is torch.Tensor and t.dtype == getattr(torch, name) and t.shape == (4,), name
        expected = bytes([0, 1, 0, 1]) if name == "bool" else bytes(range(4 * size))
        assert tensor_bytes(t) == expected, name
    assert dtypes["int16"].tolist() == [256, 770, 1284, 1798]
    assert dtypes["int64"].tolist()[0] == 506097522914230528


def test_tensor_values(tree):
    f = tree["floats32"]
    assert f.dtype == torch.float32
    values = f.tolist()
    assert values[:4] == [1.5, -0.0, math.inf, -math.inf] and bits(values[1]) == bits(-0.0)
    assert math.isnan(values[4]) and values[5] == float(np.float32(3.0e38))
    assert tree["bf16"].dtype == torch.bfloat16 and tree["bf16"].tolist() == [1.0, -2.5, 0.0078125]
    assert tree["scalar"].dim() == 0 and tree["scalar"].dtype == torch.int64 and tree["scalar"].item() == 7
    assert tree["empty"].shape == (0, 3) and tree["empty"].dtype == torch.float16
    assert tree["transposed"].dtype == torch.int32 and tree["transposed"].tolist() == [[0, 3], [1, 4], [2, 5]]
    a, b = tree["tied"]
    assert a is b and a.tolist() == [1.0, 2.0, 3.0]
    assert type(tree["param"]) is torch.nn.Parameter and not tree["param"].requires_grad
    assert tree["param"].tolist() == [0.5, 0.25]
    assert type(tree["grad"]) is torch.Tensor and tree["grad"].requires_grad and tree["grad"].tolist() == [2.0]


def test_state_dict(tree):
    sd = tree["state_dict"]
    assert type(sd) is collections.OrderedDict and list(sd) == ["weight", "bias"]
    assert sd._metadata == collections.OrderedDict([("", {"version": 1})])
    assert sd["weight"].tolist() == [[0.5, -1.0, 2.0], [0.25, 0.0, -0.125]]
    assert sd["bias"].tolist() == [1.0, -1.0]
    linear = torch.nn.Linear(3, 2)
    linear.load_state_dict(sd)
    assert linear(torch.ones(1, 3)).tolist() == [[2.5, -0.875]]


def test_numpy_values(tree):
    n = tree["numpy"]
    assert n["f64"].dtype == np.float64 and n["f64"].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert n["i8"].dtype == np.int8 and n["i8"].tolist() == [-128, 0, 127]
    assert n["bf16"].dtype == np.dtype(ml_dtypes.bfloat16) and n["bf16"].astype(np.float32).tolist() == [0.5, -4.0]
    assert n["e4m3"].dtype == np.dtype(ml_dtypes.float8_e4m3fn) and n["e4m3"].astype(np.float32).tolist() == [1.0, -0.5]
    assert type(n["scalar"]) is np.float32 and n["scalar"] == 2.5
    assert n["big_endian"].dtype.newbyteorder("=") == np.dtype("i4") and n["big_endian"].tolist() == [1, 256]
    assert n["bool"].dtype == np.bool_ and n["bool"].tolist() == [[True], [False]]


def test_containers_and_keys(tree):
    assert list(tree) == ["dtypes", "floats32", "bf16", "scalar", "empty", "transposed", "tied", "param", "grad",
                          "state_dict", "numpy", "containers", 7, -3, "scalars"]
    c = tree["containers"]
    assert c["tuple"] == (1, "two", (3.0,)) and type(c["tuple"][2]) is tuple
    assert c["list"] == [None, True, False] and [type(v) for v in c["list"]] == [type(None), bool, bool]
    point = c["point"]
    assert isinstance(point, tuple) and type(point).__name__ == "Point" and point._fields == ("x", "y")
    assert point.x == 1 and point.y == [2, 3]
    config = c["config"]
    assert dataclasses.is_dataclass(config) and type(config).__name__ == "Config"
    assert config.lr == 0.001 and config.layers == (4, 8)
    assert type(c["set"]) is set and c["set"] == {1, 2, 3}
    assert type(c["frozenset"]) is frozenset and c["frozenset"] == frozenset({"a"})
    assert type(c["ordered"]) is collections.OrderedDict and list(c["ordered"].items()) == [("z", 1), ("a", 2)]
    assert c["empty"] == [{}, [], ()] and type(c["empty"][2]) is tuple
    assert tree[7] == "int key"
    assert tree[-3] == {2**60: "big int key"} and type(next(iter(tree[-3]))) is int


def test_scalars(tree):
    s = tree["scalars"]
    assert s["big"] == 2**64 + 1 and s["neg_big"] == -(2**53) - 1 and s["safe"] == 2**53
    assert math.isnan(s["nan"]) and s["inf"] == math.inf and s["ninf"] == -math.inf
    assert bits(s["negzero"]) == bits(-0.0) and s["tiny"] == 5e-324 and s["pi"] == 3.141592653589793
    assert s["text"] == "héllo wörld ✓ 日本 🎉" and s["empty_text"] == ""
    assert type(s["bytes"]) is bytes and s["bytes"] == b"\x00\x01\xfe\xff"
    assert type(s["bytearray"]) is bytearray and s["bytearray"] == bytearray(b"ba")


def test_open_keys_metadata_and_single_tensors():
    with ms.open(TREE) as reader:
        keys = reader.keys()
        assert keys[:3] == ["dtypes.bool", "dtypes.uint8", "dtypes.uint16"]
        assert "tied.1" in keys and "state_dict.weight" in keys and len(keys) == 39
        assert reader.metadata == {"epoch": 7, "note": "golden"}
        assert reader.manifest["format_version"] == [1, 0]
        assert reader["tied.1"].tolist() == [1.0, 2.0, 3.0]
        assert reader.get("dtypes.bfloat16", framework="numpy").dtype == np.dtype(ml_dtypes.bfloat16)


def test_reads_as_numpy():
    with ms.open(TREE, framework="numpy") as reader:
        for key in reader.keys():
            if key == "dtypes.complex32":  # numpy has no complex32
                with pytest.raises(ms.ModelsafeError, match="complex32"):
                    reader[key]
                continue
            value = reader[key]
            assert isinstance(value, (np.ndarray, np.generic)), key
            if key.startswith("dtypes."):
                assert value.dtype.name == key.removeprefix("dtypes.")
                assert tensor_bytes(value) == tensor_bytes(ms.load(TREE)["dtypes"][key.removeprefix("dtypes.")])
        assert reader["state_dict.bias"].tolist() == [1.0, -1.0]


def test_plain_safetensors_reads_the_golden_file():
    with safe_open(str(TREE), framework="pt") as f:
        assert torch.equal(f.get_tensor("state_dict.weight"), torch.tensor([[0.5, -1.0, 2.0], [0.25, 0.0, -0.125]]))
        assert f.metadata()["note"] == "golden"


def test_pickle_golden_needs_allow_pickle():
    with pytest.raises(ms.UnsafeObjectError):
        ms.load(PICKLE)
    assert ms.load(PICKLE, allow_pickle=True) == {"number": 1 + 2j, "plain": [1, 2]}
