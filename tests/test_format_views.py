"""Views of another tensor's memory come back as views of it (as with torch.save); the rest is told."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import modelsafe as ms

from cli_support import invoke
from craft import edit_manifest, manifest_of


@pytest.fixture()
def views(tmp_path):
    base = torch.arange(6.0).reshape(2, 3)
    path = tmp_path / "views.safetensors"
    ms.save({"a": base, "t": base.t(), "s": base[1:], "col": base[:, 1], "tied": base,
             "bits": base.view(torch.int32), "other": torch.ones(2)}, path)
    return path


def test_views_come_back_sharing_their_base(views):
    back = ms.load(views)
    assert back["tied"] is back["a"]
    assert back["t"].tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]] and back["s"].tolist() == [[3.0, 4.0, 5.0]]
    back["a"][1, 1] = 100.0
    assert back["t"][1, 1] == 100.0 and back["s"][0, 1] == 100.0 and back["col"][1] == 100.0
    assert back["bits"][1, 1] != 100.0  # another dtype over the same memory: stored as its own copy


def test_open_load_and_numpy_share_too(views):
    with ms.open(views) as reader:
        tree = reader.load()
        alone = reader["t"]  # one tensor on its own: a copy of the view
    tree["a"][0, 0] = -1.0
    assert tree["t"][0, 0] == -1.0 and alone[0, 0] == 0.0
    arrays = ms.load(views, framework="numpy")
    arrays["a"][0, 2] = 7.0
    assert arrays["t"][2, 0] == 7.0


def test_numpy_views_share(tmp_path):
    a = np.arange(8.0).reshape(2, 4)
    path = tmp_path / "np.safetensors"
    ms.save({"a": a, "even": a[:, ::2], "row": a[1]}, path)
    back = ms.load(path)
    back["a"][1, 2] = -9.0
    assert back["even"][1, 1] == -9.0 and back["row"][2] == -9.0


def test_plain_readers_still_see_every_view_as_a_tensor(views):
    plain = load_file(str(views))
    assert plain["t"].tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]] and plain["s"].shape == (1, 3)


def test_the_manifest_records_views_and_copies(views):
    manifest = manifest_of(views)
    assert manifest["views"] == {"t": {"of": "a", "offset": 0, "strides": [1, 3]},
                                 "s": {"of": "a", "offset": 3, "strides": [3, 1]},
                                 "col": {"of": "a", "offset": 1, "strides": [3]}}
    assert manifest["copied_views"] == ["bits"]


def test_parameters_and_grad_tensors_are_not_rebuilt_as_views(tmp_path):
    p = torch.nn.Parameter(torch.ones(2, 2))
    path = tmp_path / "p.safetensors"
    ms.save({"p": p, "pt": p.detach().t()}, path)
    back = ms.load(path)
    assert isinstance(back["p"], torch.nn.Parameter) and "views" not in manifest_of(path)
    assert manifest_of(path)["copied_views"] == ["p", "pt"]


def test_no_views_no_entries(tmp_path):
    path = tmp_path / "plain.safetensors"
    w = torch.ones(2)
    ms.save({"w": w, "tied": w, "b": torch.zeros(2)}, path)
    assert "views" not in manifest_of(path) and "copied_views" not in manifest_of(path)


def test_show_says_which_tensors_load_unshared(views):
    result = invoke("show", views)
    assert result.code == 0 and "views of one another's memory (bits)" in result.out and "loads unshared" in result.out
    assert invoke("show", views, "--json").json()["copied_views"] == ["bits"]


@pytest.mark.parametrize("value", [5, ["nope"], [["a"]], "a"])
def test_hostile_copied_views_are_corrupt(views, value):
    edit_manifest(views, lambda m: m.__setitem__("copied_views", value))
    with pytest.raises(ms.CorruptCheckpointError, match="copied_views"):
        ms.load(views)


@pytest.mark.parametrize("views_value, what", [
    ([1], "views must be an object"),
    ({"t": {"of": "nope", "offset": 0, "strides": [1, 3]}}, "a view must join two stored tensors"),
    ({"t": {"of": "t", "offset": 0, "strides": [1, 3]}}, "a view must join two stored tensors"),
    ({"t": {"of": "s", "offset": 0, "strides": [1, 3]}, "s": {"of": "a", "offset": 3, "strides": [3, 1]}}, "join two"),
    ({"t": {"of": "bits", "offset": 0, "strides": [1, 3]}}, "another dtype"),
    ({"t": {"of": "a", "offset": -1, "strides": [1, 3]}}, "non-negative integers"),
    ({"t": {"of": "a", "offset": 0, "strides": [1]}}, "one per dimension"),
    ({"t": {"of": "a", "offset": 0, "strides": [1, 2**70]}}, "reads past"),
    ({"t": {"of": "a", "offset": 4, "strides": [1, 3]}}, "reads past"),
    ({"t": {"of": "a", "offset": 0, "strides": [1, 2]}}, "stored bytes differ"),  # in bounds, other values
    ({"t": "a"}, "view entry is not an object"),
])
def test_hostile_views_are_corrupt(views, views_value, what):
    edit_manifest(views, lambda m: m.__setitem__("views", views_value))
    with pytest.raises(ms.CorruptCheckpointError, match=what):
        ms.load(views)


def test_views_in_a_checkpoint_directory(tmp_path):
    base = torch.arange(4.0)
    ck = ms.Checkpoints(tmp_path / "run")
    ck.save({"a": base, "tail": base[2:]}, step=1)
    back = ck.load(1)
    back["a"][3] = 9.0
    assert back["tail"][1] == 9.0


def test_disjoint_slices_of_one_buffer_are_neither_views_nor_copies(tmp_path):
    """Arrays loaded from one mapped file, or slices of a flat buffer, overlap nothing: nothing to tell."""
    first, again = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    ms.save({"a": np.arange(4.0), "b": np.ones(3, np.int16), "c": np.zeros(5, np.float32)}, first)
    ms.save(ms.load(first), again)
    flat = torch.zeros(10)
    ms.save({"p": flat[:4], "q": flat[4:]}, first)
    for path in (first, again):
        assert "views" not in manifest_of(path) and "copied_views" not in manifest_of(path)


def test_overlapping_slices_without_a_saved_whole_load_unshared(tmp_path):
    base = torch.arange(6.0)
    path = tmp_path / "o.safetensors"
    ms.save({"x": base[:4], "y": base[2:]}, path)
    assert manifest_of(path)["copied_views"] == ["x", "y"] and "views" not in manifest_of(path)
    back = ms.load(path)
    assert back["x"].tolist() == [0.0, 1.0, 2.0, 3.0] and back["y"].tolist() == [2.0, 3.0, 4.0, 5.0]
