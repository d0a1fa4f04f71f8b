"""tf.Tensor / tf.Variable leaves: every dtype TF has, bit-exact; framework='tensorflow' for any file."""

import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

import modelsafe as ms

TF_DTYPES = ["bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "bfloat16",
             "float32", "float64", "complex64", "complex128", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz",
             "float8_e5m2fnuz"]


def _np_dtype(name):
    return np.dtype(getattr(ml_dtypes, name, None) or name)


def _random(name, shape):
    raw = np.random.default_rng(len(name)).integers(0, 256, size=int(np.prod(shape)) * _np_dtype(name).itemsize, dtype=np.uint8)
    if name == "bool":
        raw = raw % 2
    return raw.view(_np_dtype(name)).reshape(shape)


def _same_bytes(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("name", TF_DTYPES)
@pytest.mark.parametrize("shape", [(), (0, 3), (3, 2)])
def test_every_tf_dtype_round_trips_bit_exactly(tmp_path, name, shape):
    arr = _random(name, shape)
    t = tf.constant(arr)
    path = tmp_path / "t.safetensors"
    variable = not name.startswith("float8")  # TF has no float8 variables (no kernel assigns them)
    ms.save({"t": t, "v": tf.Variable(t, trainable=False) if variable else t}, path)
    back = ms.load(path)
    assert isinstance(back["t"], tf.Tensor) and not isinstance(back["t"], tf.Variable)
    assert back["t"].dtype == t.dtype and _same_bytes(back["t"].numpy(), arr)
    assert _same_bytes(back["v"].numpy(), arr)
    if variable:
        assert isinstance(back["v"], tf.Variable) and back["v"].trainable is False


def test_variables_keep_their_trainable_flag_and_a_shared_variable_stays_one(tmp_path):
    v = tf.Variable([1.0, 2.0])
    ms.save({"a": v, "b": v}, tmp_path / "v.safetensors")
    back = ms.load(tmp_path / "v.safetensors")
    assert back["a"] is back["b"] and back["a"].trainable is True


@settings(max_examples=25)  # each example starts TF ops: keep the file fast
@given(hnp.arrays(st.sampled_from([np.float32, np.int64, np.float16, np.uint8]), hnp.array_shapes(min_dims=0, max_side=4)))
def test_numpy_files_load_as_tensorflow(tmp_path_factory, arr):
    path = tmp_path_factory.mktemp("np") / "a.safetensors"
    ms.save([arr, {"x": arr}], path)
    a, d = ms.load(path, framework="tensorflow")
    assert isinstance(a, tf.Tensor) and _same_bytes(a.numpy(), arr) and _same_bytes(d["x"].numpy(), arr)


def test_torch_files_load_as_tensorflow_and_back(tmp_path):
    torch = pytest.importorskip("torch")
    src = {"w": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3), "n": torch.tensor(7)}
    ms.save(src, tmp_path / "t.safetensors")
    back = ms.load(tmp_path / "t.safetensors", framework="tensorflow")
    assert back["w"].dtype == tf.bfloat16 and back["w"].numpy().astype(np.float32).tolist() == [[0, 1, 2], [3, 4, 5]]
    ms.save(back, tmp_path / "tf.safetensors")
    again = ms.load(tmp_path / "tf.safetensors", framework="torch")
    assert torch.equal(again["w"], src["w"]) and torch.equal(again["n"], src["n"])


def test_a_dtype_tensorflow_lacks_is_an_error_naming_tensor_and_dtype(tmp_path):
    ms.save({"scale": np.ones(3, ml_dtypes.float8_e8m0fnu)}, tmp_path / "f.safetensors")
    with pytest.raises(ms.UnsupportedObjectError, match=r"'scale'.*float8_e8m0fnu.*framework='numpy'"):
        ms.load(tmp_path / "f.safetensors", framework="tensorflow")


def test_string_tensors_are_refused_at_save(tmp_path):
    with pytest.raises(ms.UnsupportedObjectError, match="string"):
        ms.save({"s": tf.constant(["a"])}, tmp_path / "s.safetensors")
