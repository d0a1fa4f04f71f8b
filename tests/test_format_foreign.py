"""ms.load / ms.open / ms.load_into on files of other tools: torch pickles load, others are named."""

from __future__ import annotations

import os
from collections import OrderedDict

import numpy as np
import pytest
import torch

import modelsafe as ms


def state() -> dict:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    return {"model": model.state_dict(), "epoch": 4, "lr": 0.5, "names": ["a", "b"], "half": torch.ones(2, dtype=torch.bfloat16)}


@pytest.mark.parametrize("zipped", [True, False], ids=["zip", "legacy"])
def test_torch_files_load_through_the_allowlist_reader(tmp_path, zipped):
    obj = state()
    path = tmp_path / "old.pt"
    torch.save(obj, path, _use_new_zipfile_serialization=zipped)
    back = ms.load(path)
    assert back["epoch"] == 4 and back["lr"] == 0.5 and back["names"] == ["a", "b"]
    assert isinstance(back["model"], OrderedDict) and list(back["model"]) == ["weight", "bias"]
    for key, tensor in obj["model"].items():
        assert torch.equal(back["model"][key], tensor)
    assert back["half"].dtype == torch.bfloat16
    as_numpy = ms.load(path, framework="numpy", map_location="cpu")
    assert isinstance(as_numpy["model"]["weight"], np.ndarray)
    with ms.open(path) as reader:
        assert set(reader.keys()) == {"model.weight", "model.bias", "half"}
        assert torch.equal(reader["model.bias"], obj["model"]["bias"])


def test_load_into_takes_a_torch_state_dict_file(tmp_path):
    source = torch.nn.Linear(3, 2)
    path = tmp_path / "weights.pth"
    torch.save(source.state_dict(), path)
    target = torch.nn.Linear(3, 2)
    report = ms.load_into(target, path)
    assert report.loaded and torch.equal(target.weight, source.weight) and torch.equal(target.bias, source.bias)


def test_shared_storage_in_a_torch_file_stays_tied(tmp_path):
    w = torch.randn(4)
    path = tmp_path / "tied.bin"
    torch.save({"a": w, "b": w}, path)
    back = ms.load(path)
    assert back["a"] is back["b"]


class Canary:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_a_torch_file_naming_a_callable_never_gets_it_called(tmp_path):
    canary = tmp_path / "canary"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.ones(1), "x": Canary(canary)}, path)
    for action in (ms.load, ms.open):
        with pytest.raises(ms.ModelsafeError):
            action(path)
    assert not canary.exists()


def test_files_of_other_tools_are_named_not_called_corrupt(tmp_path):
    path = tmp_path / "arrays.npz"
    np.savez(path, w=np.ones(2))
    for action in (ms.load, ms.open, lambda p: ms.load_into(torch.nn.Linear(1, 1), p)):
        with pytest.raises(ms.UnsupportedFormatError) as info:
            action(path)
        assert not isinstance(info.value, ms.CorruptCheckpointError)
        assert "npz" in str(info.value) and "modelsafe convert" in str(info.value) and info.value.path == str(path)


def test_damaged_files_are_still_corrupt(tmp_path):
    for name, data in [("junk.pt", b"\x80\x02garbage"), ("junk.safetensors", b"garbage" * 4), ("noext", b"\0" * 64)]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(ms.CorruptCheckpointError):
            ms.load(path)
