"""numpy .npz archives: read with allow_pickle=False, headers checked before allocating."""

from __future__ import annotations

import zipfile

import ml_dtypes
import numpy as np
import pytest

import modelsafe as ms
from modelsafe.convert import convert
from modelsafe.errors import CorruptCheckpointError, UnsafeObjectError
from modelsafe.legacy import read_foreign


def test_npz_and_compressed_npz(tmp_path):
    arrays = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.zeros(3, np.int64),
              "flag": np.array(True), "f": np.asfortranarray(np.ones((2, 3))), "h": np.ones(2, np.float16)}
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, **arrays)
        found = read_foreign(path)
        assert found.format == "npz" and list(found.tree) == list(arrays)
        for k, v in arrays.items():
            assert found.tree[k].dtype == v.dtype and np.array_equal(found.tree[k], v)
        convert(path, tmp_path / f"{save.__name__}.safetensors")
        back = ms.load(tmp_path / f"{save.__name__}.safetensors")
        for k, v in arrays.items():
            assert np.array_equal(back[k], v) and back[k].dtype == v.dtype


def test_positional_arrays_and_torch_output(tmp_path):
    import torch

    path = tmp_path / "pos.npz"
    np.savez(path, np.arange(3), np.ones(2, np.float32))
    tree = read_foreign(path, framework="torch").tree
    assert list(tree) == ["arr_0", "arr_1"] and isinstance(tree["arr_1"], torch.Tensor)
    assert torch.equal(tree["arr_0"], torch.arange(3))


def test_object_arrays_are_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, ok=np.ones(2), evil=np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(UnsafeObjectError, match="pickled object array") as exc:
        read_foreign(path)
    assert str(path) in str(exc.value)


def test_npy_header_declaring_more_than_the_member_holds(tmp_path):
    path = tmp_path / "bomb.npz"
    header = np.lib.format.header_data_from_array_1_0(np.ones(4, np.float32))
    header["shape"] = (1 << 34,)  # 64 GiB of float32 declared, 16 bytes present
    import io

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, header)
    buf.write(np.ones(4, np.float32).tobytes())
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("w.npy", buf.getvalue())
    with pytest.raises(CorruptCheckpointError, match="before allocating"):
        read_foreign(path)


def test_void_records_are_left_out_with_a_note(tmp_path):
    # np.save writes ml_dtypes arrays (bfloat16) as raw void records: the type is lost in the file
    path = tmp_path / "bf.npz"
    np.savez(path, x=np.ones(2, ml_dtypes.bfloat16), y=np.ones(2))
    summary = convert(path, tmp_path / "bf.safetensors")
    assert list(ms.load(tmp_path / "bf.safetensors")) == ["y"]
    assert any(n.startswith("x:") and "left out" in n for n in summary.notes)


def test_damaged_archives_raise_our_errors(tmp_path):
    from modelsafe.errors import ModelsafeError

    source = tmp_path / "src.npz"
    np.savez_compressed(source, w=np.arange(200, dtype=np.float32), b=np.ones((3, 4)))
    blob = source.read_bytes()
    rng = np.random.default_rng(1)
    for i in range(80):
        damaged = bytearray(blob)
        for at in rng.integers(0, len(blob), 4):
            damaged[at] = int(rng.integers(0, 256))
        if i % 4 == 0:
            damaged = damaged[: int(rng.integers(4, len(blob)))]
        path = tmp_path / "damaged.npz"
        path.write_bytes(bytes(damaged))
        try:
            read_foreign(path)
        except ModelsafeError:
            pass
