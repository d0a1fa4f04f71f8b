"""The error tree: types, builtin bases, paths and keys, and messages that say what to do."""

from __future__ import annotations

import dataclasses
import errno
import os
import pickle

import numpy as np
import pytest
import torch

import modelsafe as ms
from modelsafe import errors

from craft import edit_manifest, manifest_of


class Opaque:
    """Something nothing knows how to store."""

    def __init__(self, value=1):
        self.value = value

    def __eq__(self, other):
        return type(other) is Opaque and other.value == self.value

    def __hash__(self):
        return hash(self.value)


@dataclasses.dataclass
class Holder:
    inner: object


class Trap:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_hierarchy_and_builtin_bases():
    assert issubclass(ms.CorruptCheckpointError, ValueError)
    assert issubclass(ms.NewerFormatError, ms.CorruptCheckpointError)
    assert issubclass(ms.CheckpointNotFoundError, FileNotFoundError)
    assert issubclass(ms.UnsupportedObjectError, TypeError)
    assert issubclass(ms.StorageError, OSError)
    assert issubclass(ms.FrameworkNotInstalledError, ImportError)
    assert issubclass(ms.IncompatibleStateError, ValueError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), ms.ModelsafeError), name
    for name in ("ModelsafeError", "CorruptCheckpointError", "CheckpointNotFoundError", "UnsupportedObjectError",
                 "UnsafeObjectError", "UnknownClassError", "IncompatibleStateError"):  # the names DESIGN.md fixes
        assert getattr(ms, name) is getattr(errors, name)


@pytest.mark.parametrize("name", errors.__all__)
def test_errors_survive_pickling_with_path_and_key(name):
    cls = getattr(errors, name)
    err = cls("something failed", path="a/b.safetensors", key="w")
    assert (err.path, err.key) == ("a/b.safetensors", "w")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is cls and str(back) == "something failed"
    assert (back.path, back.key) == ("a/b.safetensors", "w")


def test_missing_file_is_a_file_not_found_error(tmp_path):
    missing = tmp_path / "nope.safetensors"
    for call in (lambda: ms.load(missing), lambda: ms.open(missing)):
        with pytest.raises(FileNotFoundError) as info:
            call()
        err = info.value
        assert isinstance(err, ms.CheckpointNotFoundError)
        assert err.path == str(missing) and err.filename == str(missing) and err.errno == errno.ENOENT
        assert str(missing) in str(err)


def test_corrupt_file_is_a_value_error_naming_the_file(tmp_path):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError) as info:
        ms.load(path)
    assert isinstance(info.value, ms.CorruptCheckpointError)
    assert info.value.path == str(path) and str(path) in str(info.value)
    assert "backup" in str(info.value) or "save it again" in str(info.value)


# -- unsupported objects -------------------------------------------------------------------

@pytest.mark.parametrize(
    "obj, where",
    [
        ({"extra": [0, 1, 2, Opaque()]}, 'obj["extra"][3]'),
        (Opaque(), "obj"),
        ([{"a": (1, Opaque())}], 'obj[0]["a"][1]'),
        ({3: {"k": Opaque()}}, 'obj[3]["k"]'),
        (Holder(inner=[Opaque()]), "obj.inner[0]"),
        ({'quote"d': Opaque()}, 'obj["quote\\"d"]'),
    ],
)
def test_unsupported_object_names_its_path_type_and_remedies(tmp_path, obj, where):
    path = tmp_path / "x.safetensors"
    with pytest.raises(ms.UnsupportedObjectError) as info:
        ms.save(obj, path)
    err = info.value
    message = str(err)
    assert isinstance(err, TypeError)
    assert err.key == where
    assert f"cannot save {where}:" in message
    assert "test_errors.Opaque" in message
    for remedy in ("register", "convert", "allow_pickle=True"):
        assert remedy in message, remedy
    assert not path.exists() and os.listdir(tmp_path) == []


def test_unsupported_dict_key(tmp_path):
    with pytest.raises(ms.UnsupportedObjectError) as info:
        ms.save({"outer": {Opaque(): 1}}, tmp_path / "k.safetensors")
    assert info.value.key == 'obj["outer"]' and "dict key" in str(info.value)


def test_unsupported_tensors_say_how_to_convert(tmp_path):
    with pytest.raises(ms.UnsupportedObjectError, match=r'obj\["sparse"\].*to_dense'):
        ms.save({"sparse": torch.eye(3).to_sparse()}, tmp_path / "s.safetensors")
    with pytest.raises(ms.UnsupportedObjectError, match=r'obj\["strings"\].*convert'):
        ms.save({"strings": np.array(["a", "b"])}, tmp_path / "u.safetensors")
    with pytest.raises(ms.UnsupportedObjectError, match=r"obj\[0\].*meta"):
        ms.save([torch.empty(2, device="meta")], tmp_path / "m.safetensors")


@pytest.mark.parametrize("kind", ["list", "dict", "tuple_in_list", "dataclass"])
def test_reference_cycles_are_a_clear_error(tmp_path, kind):
    if kind == "list":
        obj = [1]
        obj.append(obj)
        where = "obj[1]"
    elif kind == "dict":
        obj = {"a": {}}
        obj["a"]["back"] = obj
        where = 'obj["a"]["back"]'
    elif kind == "tuple_in_list":
        inner = []
        obj = (inner,)
        inner.append(obj)
        where = "obj[0][0]"
    else:
        obj = Holder(inner=None)
        obj.inner = [obj]
        where = "obj.inner[0]"
    with pytest.raises(ms.UnsupportedObjectError) as info:
        ms.save(obj, tmp_path / "c.safetensors")
    assert "cycle" in str(info.value) and info.value.key == where


def test_too_deep_nesting_is_a_clear_error(tmp_path):
    obj = 1
    for _ in range(5000):
        obj = [obj]
    with pytest.raises(ms.UnsupportedObjectError, match="nested too deeply"):
        ms.save(obj, tmp_path / "deep.safetensors")
    assert os.listdir(tmp_path) == []


def test_shared_subtrees_are_not_cycles(tmp_path):
    shared = [1, 2]
    ms.save({"a": shared, "b": shared, "c": (shared, shared)}, tmp_path / "s.safetensors")
    assert ms.load(tmp_path / "s.safetensors") == {"a": [1, 2], "b": [1, 2], "c": ([1, 2], [1, 2])}


def test_unknown_framework_argument_is_an_argument_error_listing_the_known_ones(tmp_path):
    path = tmp_path / "f.safetensors"
    ms.save({"a": np.ones(2)}, path)
    with pytest.raises(ms.InvalidArgumentError, match=r"framework must be one of (\w+, )*numpy, (\w+, )*torch.*'nope'"):
        ms.load(path, framework="nope")


# -- pickles: opt-in on both sides, never switched on by the file ------------------------------

def test_allow_pickle_on_save_stores_and_flags_the_object(tmp_path):
    path = tmp_path / "p.safetensors"
    ms.save({"extra": [0, Opaque(5)], "w": torch.ones(2)}, path, allow_pickle=True)
    entries = manifest_of(path)["tensors"]
    assert [e.get("kind") for e in entries.values()].count("pickle") == 1
    with pytest.raises(ms.UnsafeObjectError) as info:
        ms.load(path)
    err = info.value
    assert err.path == str(path) and str(path) in str(err) and "allow_pickle=True" in str(err)
    with ms.open(path) as reader:  # tensors stay readable without unpickling anything
        assert reader["w"].tolist() == [1.0, 1.0]
        with pytest.raises(ms.UnsafeObjectError):
            reader.load()
        assert reader.load(allow_pickle=True)["extra"][1] == Opaque(5)
    back = ms.load(path, allow_pickle=True)
    assert back["extra"] == [0, Opaque(5)] and torch.equal(back["w"], torch.ones(2))


def _trap_file(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "trap.safetensors"
    ms.save({"x": Trap(str(marker))}, path, allow_pickle=True)
    assert not marker.exists()
    return path, marker


def _unflag_kind(m):
    for entry in m["tensors"].values():
        entry.pop("kind", None)


def _pickle_node_to_bytes(m):
    m["tree"]["dict"][0][1] = {"bytes": m["tree"]["dict"][0][1]["pickle"]}


def _claim_permission(m):
    m["allow_pickle"] = True
    m["trusted"] = ["builtins"]
    m["metadata"] = {"dict": [["allow_pickle", True]]}


def _hide_kind_and_keep_node(m):
    _unflag_kind(m)
    m["tree"]["dict"][0][1]["type"] = "builtins.int"


@pytest.mark.parametrize("edit", [_unflag_kind, _pickle_node_to_bytes, _claim_permission, _hide_kind_and_keep_node])
def test_no_file_content_turns_unpickling_on(tmp_path, edit):
    """Edit the manifest (re-sealed, as an attacker would): loading still never unpickles."""
    path, marker = _trap_file(tmp_path)
    edit_manifest(path, edit)
    for load in (lambda: ms.load(path), lambda: ms.open(path).load()):
        try:
            result = load()
        except ms.ModelsafeError as exc:
            assert isinstance(exc, (ms.UnsafeObjectError, ms.CorruptCheckpointError)), exc
        else:
            assert not isinstance(result["x"], Trap) and isinstance(result["x"], (bytes, bytearray))
        assert not marker.exists(), "a pickle ran although the caller never allowed it"


def test_trap_does_run_when_the_caller_allows_it(tmp_path):
    """The trap is real: with allow_pickle=True the payload is unpickled."""
    path, marker = _trap_file(tmp_path)
    result = ms.load(path, allow_pickle=True)
    result["x"].close()
    assert marker.exists()


def test_pickle_failure_names_the_path(tmp_path):
    with pytest.raises(ms.UnsupportedObjectError) as info:
        ms.save({"gen": [(i for i in range(3))]}, tmp_path / "g.safetensors", allow_pickle=True)
    assert info.value.key == 'obj["gen"][0]' and "pickling it failed" in str(info.value)
