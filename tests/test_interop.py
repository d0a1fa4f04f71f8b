"""Interop with the safetensors library in both directions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as np_load_file, save_file as np_save_file
from safetensors.torch import load_file as pt_load_file, save_file as pt_save_file

import modelsafe as ms

from treecheck import tensor_bytes

# dtypes every safetensors release reads natively
SAFETENSORS_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16,
                      torch.bfloat16, torch.float32, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2]


def sample_state_dict() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2))
    sd = model.state_dict()
    for i, dt in enumerate(SAFETENSORS_DTYPES):
        sd[f"extra.{dt}"] = (torch.arange(6) % 2 == 0) if dt == torch.bool else torch.arange(6).reshape(2, 3).to(dt)
    sd["extra.transposed"] = torch.arange(6.0).reshape(2, 3).t()
    sd["extra.scalar"] = torch.tensor(1.25)
    return sd


def test_ms_file_opens_with_safe_open_pt(tmp_path):
    sd = sample_state_dict()
    path = tmp_path / "sd.safetensors"
    ms.save(sd, path, metadata={"note": "hi", "epoch": 3})
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(sd)
        for key, tensor in sd.items():
            got = f.get_tensor(key)
            assert got.dtype == tensor.dtype and got.shape == tensor.shape, key
            assert tensor_bytes(got) == tensor_bytes(tensor), key
        meta = f.metadata()
        assert meta["note"] == "hi" and meta["format"] == "pt"
    loaded = pt_load_file(str(path))
    assert torch.equal(loaded["0.weight"], sd["0.weight"])


def test_ms_file_opens_with_safe_open_numpy(tmp_path):
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1, 2], dtype=np.int64),
              "c": np.zeros((0, 2), np.float16), "d": np.arange(6, dtype=np.uint8)[::2]}
    path = tmp_path / "np.safetensors"
    ms.save(arrays, path)
    with safe_open(str(path), framework="numpy") as f:
        assert set(f.keys()) == set(arrays)
        for key, arr in arrays.items():
            got = f.get_tensor(key)
            assert got.dtype == arr.dtype and got.shape == arr.shape and np.array_equal(got, arr), key
        assert f.metadata()["format"] == "np"
    assert np.array_equal(np_load_file(str(path))["a"], arrays["a"])


def test_ms_file_with_exotic_dtypes_stays_readable_by_safetensors(tmp_path):
    """Dtypes safetensors has no code for (complex128) are stored as U8 bytes; the others keep their code."""
    obj = {"c128": torch.arange(3.0).to(torch.complex128), "fnuz": torch.zeros(4, dtype=torch.float8_e4m3fnuz),
           "u16": torch.arange(3).to(torch.uint16), "ok": torch.ones(2)}
    path = tmp_path / "exotic.safetensors"
    ms.save(obj, path)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(obj)
        assert torch.equal(f.get_tensor("ok"), obj["ok"])
        assert f.get_tensor("fnuz").dtype == torch.float8_e4m3fnuz
        raw = f.get_tensor("c128")
        assert raw.dtype == torch.uint8 and bytes(raw.numpy()) == bytes(obj["c128"].view(torch.uint8).numpy())
    back = ms.load(path)
    assert back["c128"].dtype == torch.complex128 and torch.equal(back["c128"], obj["c128"])


def test_safetensors_torch_file_loads_with_ms(tmp_path):
    sd = {f"t.{dt}": (torch.arange(6) % 3 == 0).reshape(2, 3) if dt == torch.bool else torch.arange(6).reshape(2, 3).to(dt)
          for dt in SAFETENSORS_DTYPES}
    sd["empty"] = torch.zeros(0)
    sd["scalar"] = torch.tensor(3.5)
    path = tmp_path / "st.safetensors"
    pt_save_file(sd, str(path), metadata={"source": "safetensors"})
    back = ms.load(path)
    assert isinstance(back, dict) and set(back) == set(sd)
    for key, tensor in sd.items():
        assert back[key].dtype == tensor.dtype and back[key].shape == tensor.shape, key
        assert tensor_bytes(back[key]) == tensor_bytes(tensor), key
    with ms.open(path) as reader:
        assert set(reader.keys()) == set(sd)
        assert torch.equal(reader["t.torch.float32"], sd["t.torch.float32"])
        assert reader.metadata == {"source": "safetensors"}
    as_numpy = ms.load(path, framework="numpy")
    assert np.array_equal(as_numpy["t.torch.int32"], sd["t.torch.int32"].numpy())


def test_safetensors_numpy_file_loads_with_ms(tmp_path):
    arrays = {"x": np.arange(5, dtype=np.float64), "y": np.ones((2, 2), np.int16), "z": np.array(True)}
    path = tmp_path / "np.safetensors"
    np_save_file(arrays, str(path))
    back = ms.load(path, framework="numpy")
    assert set(back) == set(arrays)
    for key in arrays:
        assert back[key].dtype == arrays[key].dtype and np.array_equal(back[key], arrays[key])
    with ms.open(path, framework="numpy") as reader:
        assert np.array_equal(reader["y"], arrays["y"])
    # without framework=, a plain file's tensors come back as torch when torch is installed
    assert isinstance(ms.load(path)["x"], torch.Tensor)


def test_safetensors_file_has_no_checksums_but_is_still_validated(tmp_path):
    path = tmp_path / "st.safetensors"
    pt_save_file({"a": torch.ones(4)}, str(path))
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # tensor bytes: plain safetensors files carry no checksum, the value changes
    path.write_bytes(bytes(data))
    assert ms.load(path)["a"][-1].item() != 1.0
    path.write_bytes(bytes(data[:-2]))  # but a truncated one is refused
    with pytest.raises(ms.CorruptCheckpointError):
        ms.load(path)


def test_resave_of_a_safetensors_file_round_trips(tmp_path):
    src, dst = tmp_path / "src.safetensors", tmp_path / "dst.safetensors"
    pt_save_file({"w": torch.randn(3, 3), "b": torch.zeros(3)}, str(src))
    ms.save(ms.load(src), dst)
    a, b = pt_load_file(str(src)), pt_load_file(str(dst))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unusual_tensor_names_survive_both_ways(tmp_path):
    sd = {"层.weight": torch.ones(2), "a/b:c": torch.zeros(1), "with space": torch.arange(3),
          "__metadata__x": torch.ones(1)}
    path = tmp_path / "names.safetensors"
    ms.save(sd, path)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(sd)
    back = ms.load(path)
    assert list(back) == list(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    other = tmp_path / "st.safetensors"
    pt_save_file(sd, str(other))
    assert set(ms.load(other)) == set(sd)
