"""reader.get_slice(key)[...]: the semantics of safetensors' get_slice, reading only what is selected."""

from __future__ import annotations

import struct

import numpy as np
import pytest
import torch
from safetensors import safe_open

import modelsafe as ms
from modelsafe.format import checksum

INDICES = [
    (slice(1, 3),), (1,), 2, -1, (slice(None), slice(2, 4)), (1, 2), (slice(None, None, 2),), (Ellipsis, 1),
    (slice(-2, None),), (slice(5, 9),), (slice(None), slice(None, None, 3)), (Ellipsis,), (0, Ellipsis, 3),
    (slice(0, 0),), (), (slice(1, 4, 2), slice(0, 6, 4)),
]


@pytest.fixture()
def saved(tmp_path):
    path = tmp_path / "w.safetensors"
    ms.save({"w": torch.arange(24.0).reshape(4, 6), "b": torch.arange(6, dtype=torch.bfloat16),
             "e": torch.zeros(0, 3), "s": torch.tensor(7)}, path)
    return path


@pytest.mark.parametrize("index", INDICES, ids=repr)
def test_same_result_as_safetensors(saved, index):
    with safe_open(str(saved), framework="pt") as f, ms.open(saved) as reader:
        theirs, mine = f.get_slice("w"), reader.get_slice("w")
        assert mine.get_shape() == theirs.get_shape() and mine.get_dtype() == theirs.get_dtype()
        expected, got = theirs[index], mine[index]
        assert got.dtype == expected.dtype and got.shape == expected.shape and torch.equal(got, expected)


def test_other_dtypes_empty_and_0d(saved):
    with safe_open(str(saved), framework="pt") as f, ms.open(saved) as reader:
        assert torch.equal(reader.get_slice("b")[1:4], f.get_slice("b")[1:4])
        assert reader.get_slice("b").get_dtype() == "BF16"
        assert reader.get_slice("e")[:, 1].shape == f.get_slice("e")[:, 1].shape == (0,)
        assert reader.get_slice("s")[()].item() == 7


def test_dtypes_numpy_lacks_and_numpy_framework(tmp_path):
    path = tmp_path / "c.safetensors"
    c32 = torch.arange(12, dtype=torch.float32).reshape(3, 4).to(torch.complex32)
    ms.save({"c": c32, "n": np.arange(10, dtype=np.int16)}, path)
    with ms.open(path) as reader:
        part = reader.get_slice("c")[1:, ::2]
        assert part.dtype == torch.complex32 and torch.equal(part.view(torch.int32), c32[1:, ::2].contiguous().view(torch.int32))
        assert reader.get_slice("c").get_dtype() == "complex32"
        assert reader.get_slice("n")[3:6].tolist() == [3, 4, 5] and isinstance(reader.get_slice("n")[3:6], np.ndarray)
    with ms.open(path, framework="numpy") as reader:
        assert reader.get_slice("n", framework="torch")[::5].tolist() == [0, 5]


def test_reads_only_the_selected_bytes_so_checksums_are_not_verified(saved, monkeypatch):
    """Damage outside the slice goes unseen by a slice and is caught by a full read."""
    with ms.open(saved) as reader:
        end = reader.record("w").end
    data = bytearray(saved.read_bytes())
    data_start = 8 + struct.unpack("<Q", data[:8])[0]
    data[data_start + end - 1] ^= 0x01  # a byte of w's last row
    saved.write_bytes(bytes(data))
    with ms.open(saved) as reader:
        monkeypatch.setattr(checksum, "digest", lambda *a: pytest.fail("a slice read hashed a payload"))
        assert reader.get_slice("w")[:3].tolist() == torch.arange(18.0).reshape(3, 6).tolist()
        monkeypatch.undo()
        with pytest.raises(ms.CorruptCheckpointError, match="'w'"):
            reader["w"]


@pytest.mark.parametrize("index", [(0, 0, 0), 9, (slice(None, None, -1),), (slice(None, None, 0),), "a",
                                   (slice(0.5, 2),), (Ellipsis, Ellipsis), (True,), ([0, 1],)], ids=repr)
def test_bad_indices_are_argument_errors(saved, index):
    with ms.open(saved) as reader, pytest.raises(ms.InvalidArgumentError) as info:
        reader.get_slice("w")[index]
    assert info.value.key == "w" and "[4, 6]" in str(info.value)


def test_get_slice_of_missing_key(saved):
    with ms.open(saved) as reader, pytest.raises(KeyError):
        reader.get_slice("nope")
