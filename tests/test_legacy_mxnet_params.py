"""MXNet .params files read without MXNet.

The writer below follows MXNet's documented NDArray-list layout (``mx.nd.save``):
list magic 0x112, reserved, count, per array (magic, storage type, shape, context,
dtype code, data), then the names.  It writes the V1, V2 and V3 array layouts and the
oldest magic-less one, so the reader is checked against each.
"""

from __future__ import annotations

import struct

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import modelsafe as ms
from modelsafe.convert import convert
from modelsafe.errors import CorruptCheckpointError, UnsupportedObjectError
from modelsafe.legacy import read_foreign
from modelsafe.legacy.mxnet_params import DTYPE_CODES, V1_MAGIC, V2_MAGIC, V3_MAGIC

CODES = {name: code for code, name in DTYPE_CODES.items()}


def _np_dtype(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def nd_array(arr: np.ndarray | None, *, version: int = 2, dtype_name: str | None = None, stype: int = 0) -> bytes:
    """One NDArray as NDArray::Save writes it (version 0 = the oldest, magic-less layout)."""
    if arr is None:
        return struct.pack("<Iii", V2_MAGIC, 0, 0) if version == 2 else struct.pack("<Iii", V3_MAGIC, 0, -1)
    name = dtype_name or ("bfloat16" if arr.dtype == ml_dtypes.bfloat16 else arr.dtype.name)
    if version == 0:
        out = struct.pack("<I", arr.ndim) + struct.pack(f"<{arr.ndim}I", *arr.shape)
    elif version == 1:
        out = struct.pack("<Ii", V1_MAGIC, arr.ndim) + struct.pack(f"<{arr.ndim}q", *arr.shape)
    else:
        out = struct.pack("<Iii", V2_MAGIC if version == 2 else V3_MAGIC, stype, arr.ndim)
        out += struct.pack(f"<{arr.ndim}q", *arr.shape)
    out += struct.pack("<iii", 1, 0, CODES[name])  # cpu(0), dtype code
    return out + np.ascontiguousarray(arr).tobytes()


def nd_save(arrays, names=None, *, version: int = 2) -> bytes:
    blob = struct.pack("<QQQ", 0x112, 0, len(arrays))
    blob += b"".join(nd_array(a, version=version) for a in arrays)
    names = names or []
    blob += struct.pack("<Q", len(names))
    for n in names:
        data = n.encode()
        blob += struct.pack("<Q", len(data)) + data
    return blob


def _gluon_params(seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "arg:conv0_weight": rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
        "arg:conv0_bias": np.zeros(4, np.float32),
        "aux:bn0_moving_mean": rng.standard_normal(4).astype(np.float64),
        "arg:embed": rng.integers(0, 100, (5, 2)).astype(np.int64),
        "arg:half": rng.standard_normal(3).astype(np.float16),
        "arg:bf": rng.standard_normal(3).astype(ml_dtypes.bfloat16),
        "arg:mask": np.array([True, False]),
        "arg:u8": np.arange(4, dtype=np.uint8),
    }


@pytest.mark.parametrize("version", [0, 1, 2, 3])
def test_named_params_of_every_layout(tmp_path, version):
    params = _gluon_params()
    if version == 0:  # the oldest layout predates bool and bfloat16
        params = {k: v for k, v in params.items() if v.dtype not in (np.bool_, ml_dtypes.bfloat16)}
    path = tmp_path / "model-0010.params"
    path.write_bytes(nd_save(list(params.values()), list(params), version=version))
    found = read_foreign(path)
    assert found.format == "mxnet" and list(found.tree) == list(params)
    for k, v in params.items():
        assert found.tree[k].dtype == v.dtype and np.array_equal(found.tree[k], v), k


def test_unnamed_list_and_scalars(tmp_path):
    arrays = [np.arange(6, dtype=np.int32).reshape(2, 3), np.array(2.5, np.float32)]
    path = tmp_path / "list.nd"
    path.write_bytes(nd_save(arrays, version=3))
    tree = read_foreign(path).tree
    assert isinstance(tree, list) and np.array_equal(tree[0], arrays[0]) and tree[1].shape == () and tree[1] == 2.5


def test_convert_to_modelsafe_and_torch(tmp_path):
    import torch

    params = _gluon_params(1)
    path = tmp_path / "net.params"
    path.write_bytes(nd_save(list(params.values()), list(params)))
    convert(path, tmp_path / "net.safetensors")
    back = ms.load(tmp_path / "net.safetensors")
    for k, v in params.items():
        assert np.array_equal(back[k], v) and back[k].dtype == v.dtype
    convert(path, tmp_path / "net-torch.safetensors", framework="torch")
    back = ms.load(tmp_path / "net-torch.safetensors")
    assert isinstance(back["arg:bf"], torch.Tensor) and back["arg:bf"].dtype == torch.bfloat16
    assert np.array_equal(back["arg:bf"].view(torch.int16).numpy().view(ml_dtypes.bfloat16), params["arg:bf"])


@settings(max_examples=40, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 4), max_size=4), min_size=1, max_size=5),
    dtype=st.sampled_from(["float32", "float64", "float16", "int8", "int32", "int64", "uint8", "bool", "bfloat16"]),
    version=st.sampled_from([1, 2, 3]),
)
def test_round_trip_property(tmp_path_factory, shapes, dtype, version):
    rng = np.random.default_rng(len(shapes))
    arrays = [(rng.standard_normal(tuple(s)) * 10).astype(_np_dtype(dtype)) for s in shapes]
    if version in (1, 2):  # V1/V2 cannot express 0-d arrays (ndim 0 means "none")
        arrays = [a.reshape(1) if a.ndim == 0 else a for a in arrays]
    names = [f"p{i}" for i in range(len(arrays))]
    path = tmp_path_factory.mktemp("mx") / "p.params"
    path.write_bytes(nd_save(arrays, names, version=version))
    tree = read_foreign(path).tree
    for n, a in zip(names, arrays):
        assert tree[n].shape == a.shape and tree[n].dtype == a.dtype and np.array_equal(tree[n], a)


def test_hostile_and_damaged_files(tmp_path):
    good = nd_save([np.ones(4, np.float32)], ["w"])
    cases = {
        "truncated": good[:-5],
        "bad magic": struct.pack("<Q", 0x113) + good[8:],
        "huge count": struct.pack("<QQQ", 0x112, 0, 1 << 60) + good[24:],
        "huge shape": struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<Iiiq", V2_MAGIC, 0, 1, 1 << 40)
                      + struct.pack("<iii", 1, 0, 0) + b"\0" * 16 + struct.pack("<Q", 0),
        "negative dim": struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<Iiiq", V2_MAGIC, 0, 1, -3) + struct.pack("<Q", 0),
        "unknown dtype": struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<Iiiq", V2_MAGIC, 0, 1, 1)
                         + struct.pack("<iii", 1, 0, 99) + b"\0" * 8 + struct.pack("<Q", 0),
        "name count": good[:-9] + struct.pack("<Q", 2) + good[-9:][8:],
        "trailing bytes": good + b"x",
        "huge name": good[:-9] + struct.pack("<QQ", 1, 1 << 50) + b"w",
    }
    for label, blob in cases.items():
        path = tmp_path / "bad.params"
        path.write_bytes(blob)
        with pytest.raises(CorruptCheckpointError) as exc:
            read_foreign(path)
        assert str(path) in str(exc.value), label
    sparse = struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<Ii", V2_MAGIC, 1) + b"\0" * 64
    path = tmp_path / "sparse.params"
    path.write_bytes(sparse)
    with pytest.raises(UnsupportedObjectError, match="sparse"):
        read_foreign(path)


def test_damaged_files_raise_our_errors(tmp_path):
    from modelsafe.errors import ModelsafeError

    params = _gluon_params(2)
    blob = nd_save(list(params.values()), list(params))
    rng = np.random.default_rng(2)
    for i in range(200):
        damaged = bytearray(blob)
        for at in rng.integers(0, len(blob), 3):
            damaged[at] = int(rng.integers(0, 256))
        if i % 4 == 0:
            damaged = damaged[: int(rng.integers(1, len(blob)))]
        path = tmp_path / "damaged.params"
        path.write_bytes(bytes(damaged))
        try:
            read_foreign(path)
        except ModelsafeError:
            pass
