"""Manifest fields that reach code (tensor attrs, aliases) and the size limits of a header."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

import modelsafe as ms
from modelsafe.format import container

from craft import edit_manifest, raw_file


@pytest.fixture()
def int_and_float(tmp_path):
    path = tmp_path / "f.safetensors"
    ms.save({"w": torch.ones(2, 3), "steps": torch.arange(3)}, path)
    return path


def set_attrs(path, name, attrs):
    edit_manifest(path, lambda m: m["tensors"][name].__setitem__("attrs", attrs))


@pytest.mark.parametrize("device", ["cuda:0", "hpu", "lazy", "bogus", "meta", "xla:3", "cuda:9"])
def test_a_files_device_is_a_hint_never_an_import_or_an_error(int_and_float, device):
    set_attrs(int_and_float, "w", {"device": device})
    kind, _, index = device.partition(":")
    here = kind == "cuda" and torch.cuda.is_available() and int(index or 0) < torch.cuda.device_count()
    before = set(sys.modules)
    for loaded in (ms.load(int_and_float)["w"], ms.open(int_and_float)["w"]):
        assert loaded.device.type == (kind if here else "cpu")  # the saved device only where this machine has it
        assert loaded.tolist() == [[1.0] * 3] * 2  # real data
    assert not {m for m in set(sys.modules) - before if "habana" in m or "torch_xla" in m}
    assert ms.load(int_and_float, map_location={device: "cpu"})["w"].device.type == "cpu"


@pytest.mark.parametrize("name, attrs, what", [
    ("steps", {"parameter": True}, "cannot require gradients"),
    ("steps", {"requires_grad": True}, "cannot require gradients"),
    ("w", {"requires_grad": "yes"}, "not a bool"),
    ("w", {"parameter": 1}, "not a bool"),
    ("w", {"device": 5}, "not a str"),
    ("w", {"device": "cuda:0; import os"}, "not a device name"),
    ("w", {"device": "x" * 100}, "not a device name"),
    ("w", {"scalar": True}, "'scalar' is set on a tensor of shape"),
    ("w", {"module": "os:system"}, "unknown tensor attr"),
    ("w", ["parameter"], "attrs must be an object"),
])
def test_bad_attrs_are_corrupt_before_any_tensor_is_built(int_and_float, name, attrs, what):
    set_attrs(int_and_float, name, attrs)
    for load in (ms.load, lambda p: ms.open(p)[name]):
        with pytest.raises(ms.CorruptCheckpointError, match=what) as info:
            load(int_and_float)
        assert info.value.path == str(int_and_float) and info.value.key == name


def test_valid_attrs_still_restore_parameters_and_grads(tmp_path):
    path = tmp_path / "p.safetensors"
    obj = {"p": torch.nn.Parameter(torch.ones(2)), "frozen": torch.nn.Parameter(torch.ones(2), requires_grad=False),
           "g": torch.zeros(2, requires_grad=True), "n": np.float32(2.5), "i": torch.nn.Parameter(torch.arange(2), requires_grad=False)}
    ms.save(obj, path)
    back = ms.load(path)
    assert isinstance(back["p"], torch.nn.Parameter) and back["p"].requires_grad
    assert isinstance(back["frozen"], torch.nn.Parameter) and not back["frozen"].requires_grad
    assert back["g"].requires_grad and back["n"] == np.float32(2.5) and not back["i"].requires_grad


@pytest.fixture()
def tied(tmp_path):
    path = tmp_path / "tied.safetensors"
    w = torch.ones(2)
    ms.save({"a": w, "b": w, "c": torch.zeros(2), "raw": b"xyz"}, path)
    return path


@pytest.mark.parametrize("aliases, what", [
    ({"b": "a", "c": "a"}, "has the name of a stored tensor"),   # c would silently read a's bytes
    ({"b": "nothing"}, "which is no stored tensor"),
    ({"b": "x", "x": "a"}, "which is another alias"),
    ({"b": "b"}, "which is another alias"),
    ({"b": 3}, "not to a tensor name"),
    ({"b": "raw"}, "a bytes payload"),
    (["b", "a"], "aliases must be an object"),
    ("a", "aliases must be an object"),
])
def test_aliases_are_validated(tied, aliases, what):
    edit_manifest(tied, lambda m: m.__setitem__("aliases", aliases))
    for action in (ms.load, ms.open):
        with pytest.raises(ms.CorruptCheckpointError, match=what) as info:
            action(tied)
        assert info.value.path == str(tied)


def test_valid_aliases_still_tie(tied):
    back = ms.load(tied)
    assert back["a"] is back["b"] and back["raw"] == b"xyz"


def _entries(count: int) -> dict:
    return {f"t{i}": {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]} for i in range(count)}


def test_too_many_tensors_is_refused_before_parsing(tmp_path, monkeypatch):
    monkeypatch.setattr(container, "MAX_TENSORS", 50)
    ok, hostile = tmp_path / "ok.safetensors", tmp_path / "hostile.safetensors"
    ok.write_bytes(raw_file(_entries(50)))
    hostile.write_bytes(raw_file(_entries(51)))
    assert len(ms.load(ok)) == 50
    monkeypatch.setattr(container.json, "loads", lambda *a, **k: pytest.fail("parsed a header over the limit"))
    with pytest.raises(ms.CorruptCheckpointError, match="51 tensors, over the limit of 50") as info:
        ms.load(hostile)
    assert info.value.path == str(hostile)


def test_header_bytes_beyond_what_its_tensors_explain_are_refused(tmp_path):
    """A header of 20 MB of metadata and one tensor: no real file looks like that."""
    path = tmp_path / "big.safetensors"
    header = {"__metadata__": {"note": "x" * (container.HEADER_BASE_BYTES + container.HEADER_BYTES_PER_TENSOR)}}
    header.update(_entries(1))
    path.write_bytes(raw_file(header))
    with pytest.raises(ms.CorruptCheckpointError, match="over the limit") as info:
        ms.open(path)
    assert "for 1 tensors" in str(info.value) and "docs/format.md" in str(info.value)


def test_a_manifest_with_more_nodes_than_its_tensors_explain_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(container, "MANIFEST_BASE_NODES", 1000)
    path = tmp_path / "nodes.safetensors"
    ms.save({"w": np.zeros(2), "history": [[i] for i in range(2000)]}, path)
    with pytest.raises(ms.CorruptCheckpointError, match="tree nodes for 1 tensors"):
        ms.load(path)
    ms.save({"w": np.zeros(2), "history": [[i] for i in range(900)]}, path)
    assert len(ms.load(path)["history"]) == 900


def test_overlong_tensor_names_are_refused(tmp_path):
    path = tmp_path / "name.safetensors"
    path.write_bytes(raw_file({"n" * (container.MAX_NAME_CHARS + 1): {"dtype": "F32", "shape": [0], "data_offsets": [0, 0]}}))
    with pytest.raises(ms.CorruptCheckpointError, match="characters exceeds the limit"):
        ms.load(path)
