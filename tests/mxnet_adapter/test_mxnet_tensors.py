"""MXNet arrays: ms.save / ms.load as npx.save / npx.load do it, every dtype MXNet has, across frameworks."""

from __future__ import annotations

import mxnet as mx
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import modelsafe as ms
from modelsafe.adapters.mxnet.tensors import DTYPES
from modelsafe.errors import UnsupportedObjectError

SHAPES = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)


def make(arr: np.ndarray, variant: str) -> mx.nd.NDArray:
    with mx.util.np_shape(True):  # 0-d and empty arrays exist under numpy shape semantics only
        return (mx.np.array if variant == "np" else mx.nd.array)(arr, dtype=arr.dtype)


def same(a: mx.nd.NDArray, b: mx.nd.NDArray) -> bool:
    return (type(a) is type(b) and a.dtype == b.dtype and a.shape == b.shape
            and a.asnumpy().tobytes() == b.asnumpy().tobytes())


@given(dtype=st.sampled_from(DTYPES), shape=SHAPES, variant=st.sampled_from(["nd", "np"]), data=st.data())
def test_every_dtype_and_shape_round_trips_bit_exactly(tmp_path_factory, dtype, shape, variant, data):
    arr = data.draw(hnp.arrays(np.dtype(dtype), shape))
    x = make(arr, variant)
    path = tmp_path_factory.mktemp("t") / "x.ms"
    ms.save(x, path)
    assert same(ms.load(path), x)


def test_a_list_and_a_dict_as_npx_save_does(tmp_path):
    x, y = mx.nd.arange(4), mx.np.ones((2, 3))
    ms.save([x, y], tmp_path / "list.ms")
    xs = ms.load(tmp_path / "list.ms")
    assert isinstance(xs, list) and same(xs[0], x) and same(xs[1], y)
    ms.save({"x": x, "y": y}, tmp_path / "dict.ms")
    d = ms.load(tmp_path / "dict.ms")
    assert list(d) == ["x", "y"] and same(d["x"], x) and same(d["y"], y)


def test_files_saved_from_numpy_load_as_mxnet_and_back(tmp_path):
    saved = {k: np.arange(6, dtype=k).reshape(2, 3) if k != "bool" else np.eye(2, dtype=bool) for k in DTYPES}
    ms.save(saved, tmp_path / "np.ms")
    loaded = ms.load(tmp_path / "np.ms", framework="mxnet")
    for k, v in saved.items():
        assert isinstance(loaded[k], mx.nd.NDArray) and loaded[k].dtype == v.dtype
        assert loaded[k].asnumpy().tobytes() == v.tobytes()
    ms.save(loaded, tmp_path / "mx.ms")
    back = ms.load(tmp_path / "mx.ms", framework="numpy")
    assert all(isinstance(back[k], np.ndarray) and back[k].tobytes() == v.tobytes() for k, v in saved.items())


@pytest.mark.parametrize("dtype", ["bfloat16", "complex64", "int16", "uint32"])
def test_a_dtype_mxnet_lacks_is_an_error_naming_the_tensor_and_the_dtype(tmp_path, dtype):
    import ml_dtypes

    npdt = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
    ms.save({"fine": np.zeros(2, np.float32), "odd": np.zeros(3, npdt)}, tmp_path / "x.ms")
    with pytest.raises(UnsupportedObjectError, match=f"'odd' is {dtype}") as info:
        ms.load(tmp_path / "x.ms", framework="mxnet")
    assert info.value.key == "odd"


def test_sparse_arrays_are_refused_with_advice(tmp_path):
    sparse = mx.nd.array(np.eye(3)).tostype("csr")
    with pytest.raises(UnsupportedObjectError, match="tostype"):
        ms.save(sparse, tmp_path / "x.ms")


def test_the_file_is_safetensors_with_the_saved_names(tmp_path):
    ms.save({"w": mx.nd.ones((2, 2))}, tmp_path / "x.ms")
    with ms.open(tmp_path / "x.ms") as reader:
        assert list(reader.keys()) == ["w"]


def test_loaded_arrays_are_private_writable_memory(tmp_path):
    """Arrays view the file's copy-on-write mapping: writing to one changes neither the file nor a later load."""
    ms.save({"w": mx.nd.arange(16), "i": mx.nd.array(np.arange(4), dtype="int8")}, tmp_path / "x.ms")
    first = ms.load(tmp_path / "x.ms")
    first["w"][:] = 7
    first["i"][:] = 1
    again = ms.load(tmp_path / "x.ms")
    assert (again["w"].asnumpy() == np.arange(16)).all() and (again["i"].asnumpy() == np.arange(4)).all()
    assert (first["w"].asnumpy() == 7).all()
    ms.save(first, tmp_path / "y.ms")  # saving what was loaded (and changed) writes the new values
    assert (ms.load(tmp_path / "y.ms")["w"].asnumpy() == 7).all()


def test_map_location_names_an_mxnet_context(tmp_path):
    from modelsafe.errors import InvalidArgumentError

    ms.save({"w": mx.nd.ones(3)}, tmp_path / "x.ms")
    for where in ("cpu", "cpu(0)", "cpu:0", mx.cpu()):
        assert ms.load(tmp_path / "x.ms", map_location=where)["w"].ctx == mx.cpu()
    with pytest.raises(InvalidArgumentError, match="mx.Context"):
        ms.load(tmp_path / "x.ms", map_location="tpu:0")
