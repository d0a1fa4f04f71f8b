"""The reader registry: signatures first, then extensions; a new format is one registration."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch

from modelsafe.errors import CorruptCheckpointError
from modelsafe.legacy import ForeignFile, known_formats, read_foreign, reader_for, register_reader


def test_signatures_win_over_extensions(tmp_path):
    torch.save({"w": torch.ones(1)}, tmp_path / "a.npz")                                    # torch zip named .npz
    assert reader_for(tmp_path / "a.npz").name == "torch"
    torch.save({"w": torch.ones(1)}, tmp_path / "b.h5", _use_new_zipfile_serialization=False)  # legacy torch named .h5
    assert reader_for(tmp_path / "b.h5").name == "torch"
    with open(tmp_path / "c.pt", "wb") as f:                                                  # npz named .pt
        np.savez(f, w=np.ones(1))
    assert reader_for(tmp_path / "c.pt").name == "npz"


def test_extension_fallback_and_unknown(tmp_path):
    (tmp_path / "x.params").write_bytes(b"\0" * 8)
    assert reader_for(tmp_path / "x.params").name == "mxnet"
    (tmp_path / "x.zzz").write_bytes(b"nothing")
    with pytest.raises(CorruptCheckpointError, match="not a format modelsafe can convert"):
        reader_for(tmp_path / "x.zzz")


def test_every_documented_format_is_registered():
    names = {name for name, _, _ in known_formats()}
    assert {"torch", "safetensors", "sharded", "npz", "keras_h5", "mxnet"} <= names


def test_registering_a_new_format(tmp_path, monkeypatch):
    module = types.ModuleType("fake_reader")
    module.read = lambda path, options: ForeignFile(str(path), "fake", {"w": np.arange(2)})
    monkeypatch.setitem(sys.modules, "fake_reader", module)
    register_reader("fake", "fake_reader", extensions=(".fake",), sniff=lambda head, path: head.startswith(b"FAKE"))
    (tmp_path / "a.bin").write_bytes(b"FAKE....")
    assert read_foreign(tmp_path / "a.bin").format == "fake"
    register_reader("fake", "fake_reader", extensions=(".fake",))  # re-registering replaces
    assert sum(1 for name, _, _ in known_formats() if name == "fake") == 1
    from modelsafe.legacy import _READERS

    _READERS[:] = [r for r in _READERS if r.name != "fake"]


def test_model_folders_resolve_to_their_weights(tmp_path):
    from safetensors.torch import save_file

    from modelsafe.convert import convert

    single = tmp_path / "single"
    single.mkdir()
    torch.save({"w": torch.ones(2)}, single / "pytorch_model.bin")
    (single / "config.json").write_text("{}")
    assert read_foreign(single).format == "torch"
    both = tmp_path / "both"
    both.mkdir()
    torch.save({"w": torch.ones(2)}, both / "pytorch_model.bin")
    save_file({"w": torch.zeros(2)}, both / "model.safetensors")
    assert read_foreign(both).format == "safetensors"  # safetensors preferred over a pickle
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    save_file({"a": torch.ones(1)}, sharded / "model-00001-of-00002.safetensors")
    save_file({"b": torch.ones(1)}, sharded / "model-00002-of-00002.safetensors")
    (sharded / "model.safetensors.index.json").write_text(
        '{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}')
    assert convert(sharded, tmp_path / "merged.safetensors").tensors == 2
    ambiguous = tmp_path / "ambiguous"
    ambiguous.mkdir()
    torch.save({"w": torch.ones(2)}, ambiguous / "a.pt")
    torch.save({"w": torch.ones(2)}, ambiguous / "b.pt")
    with pytest.raises(CorruptCheckpointError, match="name the file"):
        read_foreign(ambiguous)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CorruptCheckpointError, match="no weight files"):
        read_foreign(tmp_path / "empty")
