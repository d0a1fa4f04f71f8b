"""Hugging Face save_pretrained directories (modelsafe.pretrained): every verb reads them; the index is hostile input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

import modelsafe as ms
from modelsafe.legacy import safetensors as legacy_safetensors

A = {"enc.w": np.arange(6, dtype=np.float32).reshape(2, 3), "enc.b": np.ones(2, np.float32)}
B = {"head.w": np.full((3, 2), 2.0, np.float16)}


def sharded(tmp_path, weight_map=None, index_text=None):
    save_file(A, str(tmp_path / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file(B, str(tmp_path / "model-00002-of-00002.safetensors"), metadata={"format": "pt"})
    if weight_map is None:
        weight_map = {**{k: "model-00001-of-00002.safetensors" for k in A}, **{k: "model-00002-of-00002.safetensors" for k in B}}
    text = index_text if index_text is not None else json.dumps({"metadata": {"total_size": 48}, "weight_map": weight_map})
    (tmp_path / "model.safetensors.index.json").write_text(text)
    return tmp_path


def test_a_sharded_directory_loads_opens_and_loads_into(tmp_path):
    d = sharded(tmp_path)
    loaded = ms.load(d, framework="numpy")
    assert set(loaded) == set(A) | set(B)
    for key, value in {**A, **B}.items():
        np.testing.assert_array_equal(loaded[key], value)
        assert loaded[key].dtype == value.dtype
    with ms.open(d, framework="numpy") as reader:
        assert sorted(reader.keys()) == sorted({**A, **B})
        np.testing.assert_array_equal(reader.get_slice("enc.w")[1:2], A["enc.w"][1:2])
    target = {k: np.zeros_like(v) for k, v in {**A, **B}.items()}
    assert ms.load_into(target, d).ok
    np.testing.assert_array_equal(target["head.w"], B["head.w"])


def test_a_single_weights_file_directory_loads(tmp_path):
    save_file(A, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text("{}")
    np.testing.assert_array_equal(ms.load(tmp_path, framework="numpy")["enc.b"], A["enc.b"])


def test_a_directory_with_two_weight_files_and_no_index_is_not_guessed(tmp_path):
    save_file(A, str(tmp_path / "a.safetensors"))
    save_file(B, str(tmp_path / "b.safetensors"))
    with pytest.raises(ms.CheckpointNotFoundError, match="not a modelsafe checkpoint"):
        ms.load(tmp_path)


@pytest.mark.parametrize("weight_map, error, words", [
    ({"enc.w": "../model-00001-of-00002.safetensors"}, ms.CorruptCheckpointError, "not a file name beside the index"),
    ({"enc.w": "/etc/passwd"}, ms.CorruptCheckpointError, "not a file name beside the index"),
    ({"enc.w": "model-00003-of-00002.safetensors"}, ms.CheckpointNotFoundError, "is missing"),
    ({"enc.w": "model-00002-of-00002.safetensors"}, ms.CorruptCheckpointError, "does not hold it"),
    ({"enc.w": "model.safetensors.index.json"}, ms.CorruptCheckpointError, "another index"),
    ({"enc.w": 7}, ms.CorruptCheckpointError, "not a file name"),
    ({}, ms.CorruptCheckpointError, "no weight_map"),
])
def test_a_hostile_weight_map_is_refused(tmp_path, weight_map, error, words):
    with pytest.raises(error, match=words):
        ms.load(sharded(tmp_path, weight_map))


def test_a_weight_map_key_given_twice_is_refused(tmp_path):
    text = '{"weight_map": {"enc.w": "model-00001-of-00002.safetensors", "enc.w": "model-00002-of-00002.safetensors"}}'
    with pytest.raises(ms.CorruptCheckpointError, match="appears twice"):
        ms.load(sharded(tmp_path, index_text=text))


def test_an_index_too_large_is_refused_before_it_is_read(tmp_path, monkeypatch):
    monkeypatch.setattr(legacy_safetensors, "MAX_INDEX_BYTES", 64)
    with pytest.raises(ms.CorruptCheckpointError, match="larger than"):
        ms.open(sharded(tmp_path))


def test_a_shard_linked_out_of_the_directory_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    d = tmp_path / "model"
    d.mkdir()
    sharded(d)
    os.replace(d / "model-00002-of-00002.safetensors", outside / "shard.safetensors")
    os.symlink(outside / "shard.safetensors", d / "model-00002-of-00002.safetensors")
    with pytest.raises(ms.CorruptCheckpointError, match="leads out of"):
        ms.load(d)


def test_bad_json_is_corrupt_not_a_crash(tmp_path):
    with pytest.raises(ms.CorruptCheckpointError, match="not valid JSON"):
        ms.load(sharded(tmp_path, index_text='{"weight_map": '))
