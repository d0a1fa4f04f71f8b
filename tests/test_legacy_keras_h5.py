"""Keras weight files via h5py, without TensorFlow.

Files are written with h5py directly in the layouts Keras writes: Keras 3
``model.save_weights("x.weights.h5")`` (``<attr path>/vars/<index>`` datasets) and Keras 2
``.h5`` weights (``layer_names`` / ``weight_names`` attributes, ``dense/kernel:0`` datasets).
"""

from __future__ import annotations

import os

import h5py  # in the [dev] and [keras] extras
import numpy as np
import pytest

import modelsafe as ms
from modelsafe.convert import convert
from modelsafe.errors import CorruptCheckpointError, UnsafeObjectError
from modelsafe.legacy import read_foreign


def keras3_weights(path, seed=0) -> dict:
    """A Sequential(Dense(8), BatchNormalization(), Dense(2)) + Adam, as Keras 3 lays out .weights.h5."""
    rng = np.random.default_rng(seed)
    expected = {
        "layers/dense/vars/0": rng.standard_normal((4, 8)).astype(np.float32),
        "layers/dense/vars/1": np.zeros(8, np.float32),
        "layers/batch_normalization/vars/0": np.ones(8, np.float32),
        "layers/batch_normalization/vars/1": np.zeros(8, np.float32),
        "layers/batch_normalization/vars/2": rng.standard_normal(8).astype(np.float32),
        "layers/batch_normalization/vars/3": np.abs(rng.standard_normal(8)).astype(np.float32),
        "layers/dense_1/vars/0": rng.standard_normal((8, 2)).astype(np.float32),
        "layers/dense_1/vars/1": np.zeros(2, np.float32),
        "optimizer/vars/0": np.array(3, np.int64),          # iterations
        "optimizer/vars/1": np.array(0.001, np.float32),    # learning rate
        "optimizer/vars/2": rng.standard_normal((4, 8)).astype(np.float32),
    }
    with h5py.File(path, "w") as f:
        f.create_group("vars")  # the model's own (empty) variables
        for name, value in expected.items():
            group_path, _, index = name.rpartition("/")
            group = f.require_group(group_path)
            group.create_dataset(index, data=value)
            if "name" not in group.attrs:
                group.attrs["name"] = group_path.split("/")[-2]
    return expected


def test_keras3_weights_h5(tmp_path):
    path = tmp_path / "model.weights.h5"
    expected = keras3_weights(path)
    found = read_foreign(path)
    assert found.format == "keras_h5"
    assert set(found.tree) == set(expected)
    for k, v in expected.items():
        assert found.tree[k].dtype == v.dtype and found.tree[k].shape == v.shape and np.array_equal(found.tree[k], v), k


def test_keras2_h5_weights(tmp_path):
    path = tmp_path / "legacy.h5"
    kernel = np.arange(6, dtype=np.float32).reshape(2, 3)
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        f.attrs["backend"] = b"tensorflow"
        g = f.create_group("dense")
        g.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        g.create_dataset("dense/kernel:0", data=kernel)
        g.create_dataset("dense/bias:0", data=np.zeros(3, np.float32))
    tree = read_foreign(path).tree
    assert list(tree) == ["dense/dense/bias:0", "dense/dense/kernel:0"]
    assert np.array_equal(tree["dense/dense/kernel:0"], kernel)


def test_convert_keras_to_modelsafe_and_plain(tmp_path):
    from safetensors.numpy import load_file

    path = tmp_path / "model.weights.h5"
    expected = keras3_weights(path, seed=3)
    summary = convert(path, tmp_path / "k.safetensors")
    assert summary.source_format == "keras_h5" and summary.tensors == len(expected)
    back = ms.load(tmp_path / "k.safetensors")
    for k, v in expected.items():
        assert np.array_equal(back[k], v) and back[k].dtype == v.dtype
    convert(path, tmp_path / "plain.safetensors", to="safetensors")
    plain = load_file(tmp_path / "plain.safetensors")
    assert set(plain) == set(expected)  # plain names keep the slashes: nothing is renamed


def test_big_endian_and_bfloat16_datasets(tmp_path):
    import ml_dtypes

    path = tmp_path / "odd.weights.h5"
    bf = np.arange(4, dtype=np.float32).astype(ml_dtypes.bfloat16)
    with h5py.File(path, "w") as f:
        f.create_dataset("be", data=np.arange(3, dtype=">f8"))
        ds = f.create_dataset("bf", data=bf.view(np.uint16))
        ds.attrs["dtype"] = "bfloat16"
        f.create_dataset("label", data=b"not a tensor")
    found = read_foreign(path)
    assert found.tree["be"].dtype == np.float64 and np.array_equal(found.tree["be"], [0, 1, 2])
    assert found.tree["bf"].dtype == ml_dtypes.bfloat16 and np.array_equal(found.tree["bf"], bf)
    assert "label" not in found.tree and any("label" in n for n in found.notes)


def test_links_and_storage_outside_the_file_are_refused(tmp_path):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.arange(4, dtype=np.float32).tobytes())
    path = tmp_path / "ext.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("w", shape=(4,), dtype="f4", external=[(str(secret), 0, 16)])
    with pytest.raises(UnsafeObjectError, match="external files"):
        read_foreign(path)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=np.ones(2))
    path = tmp_path / "links.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("real", data=np.zeros(2))
        f["outside"] = h5py.ExternalLink(str(other), "/x")
        f["alias"] = h5py.SoftLink("/real")
    found = read_foreign(path)
    assert list(found.tree) == ["real"]
    assert any("external link" in n for n in found.notes)


def test_a_tiny_file_declaring_gigabytes_is_refused(tmp_path):
    path = tmp_path / "bomb.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("w", shape=(1 << 20, 1 << 10), dtype="f8", chunks=(1024, 64))  # 8 GiB, nothing written
    assert path.stat().st_size < 1 << 20
    with pytest.raises(CorruptCheckpointError, match="refused before allocating"):
        read_foreign(path)


def test_not_hdf5(tmp_path):
    path = tmp_path / "fake.weights.h5"
    path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 40)
    with pytest.raises(CorruptCheckpointError):
        read_foreign(path)


GOLDEN = os.path.join(os.path.dirname(__file__), "golden")


def test_files_keras_itself_wrote():
    """tests/golden/keras3-sequential.*: Dense(8) + BatchNormalization + Dense(2), Adam, written by Keras 3."""
    weights = read_foreign(os.path.join(GOLDEN, "keras3-sequential.weights.h5"))
    shapes = {k: v.shape for k, v in weights.tree.items()}
    assert shapes["layers/dense/vars/0"] == (4, 8) and shapes["layers/dense_1/vars/0"] == (8, 2)
    assert [shapes[f"layers/batch_normalization/vars/{i}"] for i in range(4)] == [(8,)] * 4
    assert list(weights.tree)[-14:] == [f"optimizer/vars/{i}" for i in range(14)]  # vars/2 before vars/10
    assert weights.tree["optimizer/vars/0"] == 1  # iterations after one epoch of one batch
    archive = read_foreign(os.path.join(GOLDEN, "keras3-sequential.keras"))
    assert archive.format == "keras_h5" and any("config.json" in n for n in archive.notes)
    assert list(archive.tree) == list(weights.tree)
    assert all(np.array_equal(archive.tree[k], v) for k, v in weights.tree.items())


def test_convert_a_keras_archive(tmp_path):
    summary = convert(os.path.join(GOLDEN, "keras3-sequential.keras"), tmp_path / "k.safetensors")
    assert summary.source_format == "keras_h5" and summary.tensors == 22
    back = ms.load(tmp_path / "k.safetensors")
    assert back["layers/dense/vars/0"].shape == (4, 8)


def test_keras_archive_bombs_are_refused(tmp_path):
    import zipfile

    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("config.json", "{}")
        with z.open("model.weights.h5", "w", force_zip64=True) as member:
            chunk = b"\0" * (1 << 20)
            for _ in range(128):  # 128 MiB of zeros: a ~130 KiB archive
                member.write(chunk)
    assert path.stat().st_size < 1 << 20
    with pytest.raises(CorruptCheckpointError, match="refused before allocating"):
        read_foreign(path)


def test_damaged_files_raise_our_errors(tmp_path):
    from modelsafe.errors import ModelsafeError

    source = tmp_path / "src.weights.h5"
    keras3_weights(source)
    blob = source.read_bytes()
    rng = np.random.default_rng(0)
    for i in range(60):
        damaged = bytearray(blob)
        for at in rng.integers(0, len(blob), 8):
            damaged[at] = int(rng.integers(0, 256))
        if i % 3 == 0:
            damaged = damaged[: int(rng.integers(8, len(blob)))]
        path = tmp_path / "damaged.weights.h5"
        path.write_bytes(bytes(damaged))
        try:
            read_foreign(path)
        except ModelsafeError:
            pass
