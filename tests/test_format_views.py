"""Views of another tensor's memory are stored as copies, and the file and `show` say so."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import modelsafe as ms
from cli_support import invoke
from craft import edit_manifest, manifest_of


@pytest.fixture()
def views(tmp_path):
    base = torch.arange(6.0).reshape(2, 3)
    path = tmp_path / "views.safetensors"
    ms.save({"a": base, "t": base.t(), "s": base[1:], "tied": base, "other": torch.ones(2)}, path)
    return path


def test_views_are_recorded_and_load_as_independent_copies(views):
    assert manifest_of(views)["copied_views"] == ["a", "t", "s"]
    back = ms.load(views)
    assert back["tied"] is back["a"]  # identical views stay tied
    assert back["t"].tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]] and back["s"].tolist() == [[3.0, 4.0, 5.0]]
    back["a"][1, 0] = 100.0
    assert back["t"][0, 1] == 3.0 and back["s"][0, 0] == 3.0  # documented: not shared after loading


def test_numpy_views_are_recorded_too(tmp_path):
    x = np.arange(4.0)
    path = tmp_path / "np.safetensors"
    ms.save({"x": x, "y": x[1:], "z": np.ones(2)}, path)
    assert manifest_of(path)["copied_views"] == ["x", "y"]


def test_no_views_no_entry(tmp_path):
    path = tmp_path / "plain.safetensors"
    w = torch.ones(2)
    ms.save({"w": w, "tied": w, "b": torch.zeros(2)}, path)
    assert "copied_views" not in manifest_of(path)


def test_show_says_views_load_unshared(views):
    result = invoke("show", views)
    assert result.code == 0 and "views of one another's memory (a, t, s)" in result.out
    assert "loads unshared" in result.out
    assert invoke("show", views, "--json").json()["copied_views"] == ["a", "t", "s"]


@pytest.mark.parametrize("value", [5, ["nope"], [["a"]], "a"])
def test_hostile_copied_views_are_corrupt(views, value):
    edit_manifest(views, lambda m: m.__setitem__("copied_views", value))
    with pytest.raises(ms.CorruptCheckpointError, match="copied_views"):
        ms.load(views)
