"""Weights saved from one framework load as another (``framework=``), bit-exact for every dtype both have.

A dtype the target framework lacks is an error naming the tensor and the dtype.
"""

from __future__ import annotations

import numpy as np
import pytest

import modelsafe as ms
from modelsafe.adapters import adapter_named
from modelsafe.errors import UnsupportedObjectError
from modelsafe.format import dtypes

torch = pytest.importorskip("torch")
jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402

FRAMEWORKS = ["numpy", "torch", "jax"]
DTYPES = [d.name for d in dtypes.BY_NAME.values()]


def _has(framework: str, name: str) -> bool:
    if framework == "torch":
        return isinstance(getattr(torch, name, None), torch.dtype)
    return dtypes.numpy_dtype(dtypes.BY_NAME[name]) is not None   # numpy and jax share ml_dtypes' dtypes


def _raw(name: str, count: int = 6) -> np.ndarray:
    raw = np.random.default_rng(len(name)).integers(0, 256, size=count * dtypes.BY_NAME[name].itemsize, dtype=np.uint8)
    return raw % 2 if name == "bool" else raw


def _make(framework: str, name: str, raw: np.ndarray):
    if framework == "torch":
        return torch.frombuffer(bytearray(raw.tobytes()), dtype=torch.uint8).view(getattr(torch, name)).reshape(2, -1)
    arr = raw.view(dtypes.numpy_dtype(dtypes.BY_NAME[name])).reshape(2, -1)
    return jnp.asarray(arr) if framework == "jax" else arr


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):   # jax holds 64-bit dtypes only in 64-bit mode
        yield


@pytest.mark.parametrize(("source", "name"), [(fw, name) for fw in FRAMEWORKS for name in DTYPES if _has(fw, name)])
def test_every_dtype_loads_bit_exact_in_every_framework_that_has_it(tmp_path, source, name):
    raw = _raw(name)
    path = tmp_path / "w.safetensors"
    ms.save({"layer.w": _make(source, name, raw)}, path)
    for target in FRAMEWORKS:
        if _has(target, name):
            got = ms.load(path, framework=target)["layer.w"]
            adapter = adapter_named(target)
            assert adapter.handles(type(got)), (target, type(got))
            assert adapter.describe(got).dtype == name and tuple(got.shape) == (2, len(raw) // 2 // dtypes.BY_NAME[name].itemsize)
            assert bytes(adapter.host_bytes(got)) == raw.tobytes(), (source, target, name)
        else:
            with pytest.raises(UnsupportedObjectError, match=rf"'layer\.w'.*{name}"):
                ms.load(path, framework=target)


def test_the_matrix_has_cells_a_target_lacks():
    """The error branch above is exercised: some dtype is missing from some framework."""
    assert any(not _has(fw, name) for fw in FRAMEWORKS for name in DTYPES)
