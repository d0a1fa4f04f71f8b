"""Every dtype against the real safetensors package, both ways, plus the codes modelsafe cannot load."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import save_file as pt_save_file

import modelsafe as ms
from modelsafe.format import dtypes

from treecheck import tensor_bytes

# the logical dtypes safetensors has no code for: stored as raw U8 bytes
NO_SAFETENSORS_CODE = {"complex32", "complex128"}
TORCH_DTYPES = [name for name in dtypes.BY_NAME if isinstance(getattr(torch, name, None), torch.dtype)]
# codes that safetensors' numpy reader turns into arrays
SAFETENSORS_NUMPY_CODES = {"BOOL", "U8", "I8", "U16", "I16", "U32", "I32", "U64", "I64", "F16", "F32", "F64", "C64"}


def sample(name: str, shape=(2, 3)) -> torch.Tensor:
    """A tensor of dtype ``name`` whose bytes are all different (bit patterns, not values)."""
    dt = getattr(torch, name)
    itemsize = dtypes.BY_NAME[name].itemsize
    count = int(np.prod(shape))
    raw = (torch.arange(count * itemsize) * 37 % 251).to(torch.uint8)
    if name == "bool":
        return (raw % 2 == 1).reshape(shape)
    return raw.view(dt).reshape(shape)


def header_of(path) -> dict:
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n])


def test_every_dtype_table_entry_is_tested():
    assert set(TORCH_DTYPES) == set(dtypes.BY_NAME)  # this torch has them all


@pytest.mark.parametrize("name", TORCH_DTYPES)
def test_modelsafe_file_reads_in_safetensors_with_real_dtype_and_shape(tmp_path, name):
    tensor = sample(name)
    path = tmp_path / "t.safetensors"
    ms.save({"t": tensor}, path)
    entry = header_of(path)["t"]
    with safe_open(str(path), framework="pt") as f:
        got = f.get_tensor("t")
    if name in NO_SAFETENSORS_CODE:
        assert entry["dtype"] == "U8" and got.dtype == torch.uint8 and got.shape == (tensor.numel() * tensor.element_size(),)
    else:
        assert entry["dtype"] == dtypes.BY_NAME[name].storage
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, (got.dtype, got.shape)
    assert tensor_bytes(got) == tensor_bytes(tensor)
    back = ms.load(path)["t"]
    assert back.dtype == tensor.dtype and back.shape == tensor.shape and tensor_bytes(back) == tensor_bytes(tensor)


@pytest.mark.parametrize("name", [n for n in TORCH_DTYPES if n not in NO_SAFETENSORS_CODE])
def test_safetensors_file_of_every_dtype_loads_exactly(tmp_path, name):
    tensor = sample(name)
    path = tmp_path / "st.safetensors"
    pt_save_file({"t": tensor, "scalar": sample(name, ())} if name != "float4_e2m1fn_x2" else {"t": tensor}, str(path))
    back = ms.load(path)
    assert back["t"].dtype == tensor.dtype and back["t"].shape == tensor.shape
    assert tensor_bytes(back["t"]) == tensor_bytes(tensor)
    if name != "float4_e2m1fn_x2":
        assert back["scalar"].shape == () and tensor_bytes(back["scalar"]) == tensor_bytes(sample(name, ()))
    npdt = dtypes.numpy_dtype(dtypes.BY_NAME[name])
    if npdt is not None:
        arr = ms.load(path, framework="numpy")["t"]
        assert arr.dtype == npdt and arr.shape == tensor.shape and arr.tobytes() == tensor_bytes(tensor)


@pytest.mark.parametrize("name", [n for n, d in dtypes.BY_NAME.items()
                                  if d.storage in SAFETENSORS_NUMPY_CODES and not d.stored_as_bytes])
def test_numpy_both_ways(tmp_path, name):
    arr = sample(name).numpy()
    mine, theirs = tmp_path / "ms.safetensors", tmp_path / "st.safetensors"
    ms.save({"a": arr}, mine)
    with safe_open(str(mine), framework="numpy") as f:
        got = f.get_tensor("a")
    assert got.dtype == arr.dtype and got.shape == arr.shape and got.tobytes() == arr.tobytes()
    np_save_file({"a": arr}, str(theirs))
    back = ms.load(theirs, framework="numpy")["a"]
    assert back.dtype == arr.dtype and back.shape == arr.shape and back.tobytes() == arr.tobytes()


def test_float4_pairs_keep_their_shape_also_when_0d(tmp_path):
    obj = {"m": sample("float4_e2m1fn_x2", (3, 2)), "s": sample("float4_e2m1fn_x2", ())}
    path = tmp_path / "f4.safetensors"
    ms.save(obj, path)
    header = header_of(path)
    assert header["m"]["shape"] == [3, 4] and header["m"]["dtype"] == "F4"  # F4 counts 4-bit halves
    back = ms.load(path)
    for key in obj:
        assert back[key].shape == obj[key].shape and tensor_bytes(back[key]) == tensor_bytes(obj[key]), key


def _raw_file(path, entries: dict, data: bytes) -> None:
    text = json.dumps(entries).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


@pytest.mark.parametrize("code, shape, nbytes", [("F6_E2M3", [2, 4], 6), ("F6_E3M2", [4], 3), ("F4", [2, 3], 3)])
def test_codes_without_a_tensor_type_are_unsupported_not_corrupt(tmp_path, code, shape, nbytes):
    path = tmp_path / "x.safetensors"
    entries = {"ok": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
               "odd": {"dtype": code, "shape": shape, "data_offsets": [8, 8 + nbytes]}}
    _raw_file(path, entries, np.array([1.5, 2.5], np.float32).tobytes() + bytes(range(nbytes)))
    with safe_open(str(path), framework="numpy") as f:  # the file is valid for safetensors itself
        assert f.get_slice("odd").get_shape() == shape
    with ms.open(path) as reader:
        assert set(reader.keys()) == {"ok", "odd"}
        assert reader["ok"].tolist() == [1.5, 2.5]
        with pytest.raises(ms.UnsupportedFormatError) as info:
            reader["odd"]
    message = str(info.value)
    assert f"unsupported dtype {code}" in message and "'odd'" in message and str(path) in message
    assert not isinstance(info.value, ms.CorruptCheckpointError)
    with pytest.raises(ms.UnsupportedFormatError):
        ms.load(path)


@pytest.mark.parametrize("code, shape, nbytes", [("F4", [3], 2), ("F6_E2M3", [3], 3), ("F4", [2], 2)])
def test_sub_byte_codes_must_fill_whole_bytes(tmp_path, code, shape, nbytes):
    path = tmp_path / "x.safetensors"
    _raw_file(path, {"a": {"dtype": code, "shape": shape, "data_offsets": [0, nbytes]}}, bytes(nbytes))
    with pytest.raises(ms.CorruptCheckpointError, match="'a'"):
        ms.load(path)


def test_files_of_the_old_u8_form_still_load(tmp_path):
    """Before native codes, fnuz/e8m0 were written as U8 bytes with the dtype in the manifest."""
    from craft import edit_manifest, read_parts, sealed_file

    tensor = sample("float8_e8m0fnu")
    path = tmp_path / "old.safetensors"
    ms.save({"t": tensor}, path)
    header, data = read_parts(path)
    header["t"]["dtype"], header["t"]["shape"] = "U8", [6]
    path.write_bytes(sealed_file(header, data))
    edit_manifest(path, lambda m: m["tensors"]["t"].update(dtype="float8_e8m0fnu", shape=[2, 3]))
    back = ms.load(path)["t"]
    assert back.dtype == tensor.dtype and back.shape == (2, 3) and tensor_bytes(back) == tensor_bytes(tensor)
