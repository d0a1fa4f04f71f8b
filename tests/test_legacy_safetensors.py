"""safetensors sources: single files (foreign and modelsafe) and sharded checkpoints with an index."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import modelsafe as ms
from modelsafe.convert import convert
from modelsafe.errors import CorruptCheckpointError
from modelsafe.legacy import read_foreign


def _state(seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {f"layers.{i}.weight": torch.randn(4, 4, generator=g) for i in range(6)} | {"norm.bias": torch.zeros(4)}


def test_foreign_safetensors_file(tmp_path):
    state = _state()
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    found = read_foreign(tmp_path / "model.safetensors")
    assert found.format == "safetensors"
    assert set(found.tree) == set(state) and all(torch.equal(found.tree[k], v) for k, v in state.items())
    convert(tmp_path / "model.safetensors", tmp_path / "ms.safetensors")
    back = ms.load(tmp_path / "ms.safetensors")
    assert all(torch.equal(back[k], v) for k, v in state.items())


def test_modelsafe_file_keeps_its_tree(tmp_path):
    obj = {"model": _state(1), "epoch": 3, "steps": (1, 2)}
    ms.save(obj, tmp_path / "a.safetensors")
    convert(tmp_path / "a.safetensors", tmp_path / "plain.safetensors", to="safetensors")
    found = read_foreign(tmp_path / "plain.safetensors")
    assert set(found.tree) == {f"model.{k}" for k in obj["model"]}
    convert(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    back = ms.load(tmp_path / "b.safetensors")
    assert back["epoch"] == 3 and back["steps"] == (1, 2)


def _shard(tmp_path, state: dict, shards: int, *, torch_shards: bool = False) -> str:
    names = list(state)
    weight_map = {}
    for s in range(shards):
        part = {n: state[n] for n in names[s::shards]}
        fname = f"model-{s + 1:05d}-of-{shards:05d}." + ("bin" if torch_shards else "safetensors")
        if torch_shards:
            torch.save(part, tmp_path / fname)
        else:
            save_file(part, tmp_path / fname)
        weight_map.update({n: fname for n in part})
    index = tmp_path / ("pytorch_model.bin.index.json" if torch_shards else "model.safetensors.index.json")
    index.write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return str(index)


@pytest.mark.parametrize("torch_shards", [False, True])
def test_sharded_checkpoints(tmp_path, torch_shards):
    state = _state(2)
    index = _shard(tmp_path, state, 3, torch_shards=torch_shards)
    found = read_foreign(index)
    assert found.format == "sharded" and set(found.tree) == set(state)
    summary = convert(index, tmp_path / "merged.safetensors")
    assert summary.tensors == len(state)
    back = ms.load(tmp_path / "merged.safetensors")
    assert all(torch.equal(back[k], v) for k, v in state.items())


def test_sharded_index_problems(tmp_path):
    state = _state(3)
    index = _shard(tmp_path, state, 2)
    doc = json.loads(open(index).read())
    for label, edit, match in [
        ("escape", lambda d: d["weight_map"].update({"x": "../outside.safetensors"}), "not a file name beside"),
        ("absolute", lambda d: d["weight_map"].update({"x": "/etc/passwd"}), "not a file name beside"),
        ("missing tensor", lambda d: d["weight_map"].update({"ghost": d["weight_map"]["norm.bias"]}), "does not hold"),
        ("no map", lambda d: d.pop("weight_map"), "no weight_map"),
    ]:
        bad = json.loads(json.dumps(doc))
        edit(bad)
        path = tmp_path / f"{label.replace(' ', '_')}.index.json"
        path.write_text(json.dumps(bad))
        with pytest.raises(CorruptCheckpointError, match=match):
            read_foreign(path)
    path = tmp_path / "missing.index.json"
    path.write_text(json.dumps({"weight_map": {"a": "nothere.safetensors"}}))
    with pytest.raises(ms.CheckpointNotFoundError):
        read_foreign(path)


def test_damaged_safetensors_is_corrupt(tmp_path):
    save_file({"w": torch.ones(8)}, tmp_path / "w.safetensors")
    blob = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(blob[:-4])
    with pytest.raises(CorruptCheckpointError):
        convert(tmp_path / "cut.safetensors", tmp_path / "o.safetensors")
    assert not (tmp_path / "o.safetensors").exists()


def test_numpy_framework_for_safetensors(tmp_path):
    save_file({"w": torch.arange(3.0)}, tmp_path / "w.safetensors")
    found = read_foreign(tmp_path / "w.safetensors", framework="numpy")
    assert isinstance(found.tree["w"], np.ndarray)
