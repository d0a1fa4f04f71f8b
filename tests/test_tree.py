"""tree: object tree <-> JSON skeleton + leaves."""

from __future__ import annotations

import collections
import dataclasses
import json

import numpy as np
import pytest

import modelsafe as ms
from modelsafe.tree import Attr, Unflattener, flatten, format_path, register_decoder, register_encoder, walk_refs

Pt = collections.namedtuple("Pt", "a b")


@dataclasses.dataclass
class DC:
    x: int
    y: list


def test_format_path_reads_like_python():
    assert format_path([]) == "obj"
    assert format_path(["extra", 3]) == 'obj["extra"][3]'
    assert format_path([0, Attr("field"), "k"]) == 'obj[0].field["k"]'
    assert format_path(['a"b']) == 'obj["a\\"b"]'
    assert format_path([(1, 2)]) == "obj[(1, 2)]"


def test_skeleton_is_plain_json_and_tensors_become_leaves():
    a, b = np.arange(3), np.ones(2)
    fl = flatten({"a": a, "nested": [b, (1, "s")], 5: None})
    json.dumps(fl.skeleton, allow_nan=False)
    assert fl.skeleton == {"dict": [
        ["a", {"tensor": "a"}],
        ["nested", [{"tensor": "nested.0"}, {"tuple": [1, "s"]}]],
        [5, None],
    ]}
    assert [leaf.name for leaf in fl.payloads] == ["a", "nested.0"]
    assert [leaf.path for leaf in fl.payloads] == ['obj["a"]', 'obj["nested"][0]']
    assert [leaf.kind for leaf in fl.payloads] == ["tensor", "tensor"]


def test_scalar_nodes():
    fl = flatten([1.5, float("nan"), float("inf"), float("-inf"), 2**53, 2**53 + 1, -(2**53) - 1, True, None, "x"])
    assert fl.skeleton == [{"float": 1.5}, {"float": "nan"}, {"float": "inf"}, {"float": "-inf"}, 2**53,
                           {"int": str(2**53 + 1)}, {"int": str(-(2**53) - 1)}, True, None, "x"]


def test_int_keys_stay_distinct_from_string_keys():
    fl = flatten({1: "int", "1": "str", 2**60: "big"})
    assert fl.skeleton["dict"] == [[1, "int"], ["1", "str"], [{"int": str(2**60)}, "big"]]


def test_leaf_names_are_unique_and_never_reserved():
    fl = flatten({"a.b": np.ones(1), "a": {"b": np.zeros(1)}, "__metadata__": np.ones(1)})
    names = [leaf.name for leaf in fl.payloads]
    assert len(set(names)) == 3 and "__metadata__" not in names
    assert names[:2] == ["a.b", "a.b#2"]
    assert flatten(np.ones(1)).payloads[0].name == "tensor"  # a bare tensor at the root


def test_tied_tensors_become_aliases():
    t = np.arange(4)
    fl = flatten({"x": t, "y": t, "z": t[:2]})
    assert [leaf.name for leaf in fl.payloads] == ["x", "z"]
    assert fl.aliases == {"y": "x"}
    assert fl.skeleton["dict"][1] == ["y", {"tensor": "x"}]


def test_containers_record_their_types():
    fl = flatten({"p": Pt(1, 2), "d": DC(1, [2]), "o": collections.OrderedDict(a=1), "s": {3}, "f": frozenset({4}),
                  "b": b"by", "ba": bytearray(b"x")})
    nodes = dict(fl.skeleton["dict"])
    assert nodes["p"] == {"namedtuple": "test_tree:Pt", "fields": ["a", "b"], "items": [1, 2]}
    assert nodes["d"] == {"dataclass": "test_tree:DC", "fields": [["x", 1], ["y", [2]]]}
    assert nodes["o"] == {"dict": [["a", 1]], "type": "OrderedDict"}
    assert nodes["s"] == {"set": [3]} and nodes["f"] == {"frozenset": [4]}
    assert nodes["b"] == {"bytes": "b"} and nodes["ba"] == {"bytes": "ba", "type": "bytearray"}
    assert [(leaf.name, leaf.kind) for leaf in fl.payloads] == [("b", "bytes"), ("ba", "bytes")]


def test_walk_refs_in_tree_order():
    fl = flatten({"b": np.ones(1), "a": [b"x", {"c": np.ones(2)}], "t": (np.ones(3),)})
    assert list(walk_refs(fl.skeleton)) == [("tensor", "b"), ("bytes", "a.0"), ("tensor", "a.1.c"), ("tensor", "t.0")]


def decode(node, values=None, **kwargs):
    return Unflattener(values or {}, source="f.safetensors", **kwargs).decode(node)


@pytest.mark.parametrize("node", [{"bytes": "t"}, {"pickle": "t"}, {"tensor": "b"}])
def test_a_node_must_use_a_payload_of_its_own_kind(node):
    """Found by the fuzz harness: a bytes node pointed at a tensor reached bytearray() with a tensor."""
    values = {"t": np.arange(3), "b": b"raw"}
    with pytest.raises(ms.CorruptCheckpointError, match="as (bytes|pickle|tensor), but the file stores"):
        decode(node, values, allow_pickle=True)


def test_decode_inverts_encode():
    obj = {"a": [1, (2.5, None)], 3: {"s": {1, 2}}, "p": Pt(1, [2]), "d": DC(3, [4]), "big": 2**70}
    fl = flatten(obj)
    values = {p.name: p.value for p in fl.payloads}
    back = decode(fl.skeleton, values)
    assert back == obj and type(back["p"]) is Pt and type(back["d"]) is DC


@pytest.mark.parametrize(
    "node",
    [
        {"unknown_tag": 1},
        {},
        {"int": "1.5"},
        {"int": None},
        {"float": "NaN!"},
        {"float": True},
        {"tuple": "abc"},
        {"dict": [[1]]},
        {"dict": {"a": 1}},
        {"dict": [[[1], 2]]},
        {"set": 5},
        {"set": [[1, 2]]},
        {"namedtuple": "x:Y", "fields": ["a", "b"], "items": [1]},
        {"dataclass": "x:Y", "fields": [["a"]]},
        {"dataclass": "x:Y", "fields": [[1, 2]]},
        {"dataclass": "x:Y", "fields": [["a b", 1]]},
        {"dataclass": "x:Y", "fields": [["class", 1]]},
        {"dataclass": "x:Y", "fields": [["__class__", 1]]},
        {"dataclass": "x:Y", "fields": [["__dict__", 1]]},
        {"tensor": "missing"},
        {"tensor": ["not", "a", "name"]},
        {"bytes": "missing"},
        3.5,
    ],
    ids=repr,
)
def test_malformed_nodes_are_corrupt_checkpoint_errors(node):
    with pytest.raises(ms.CorruptCheckpointError) as info:
        decode(node)
    assert info.value.path == "f.safetensors" and "f.safetensors" in str(info.value)


def test_pickle_node_refused_without_allow_pickle():
    import pickle

    node = {"pickle": "p", "type": "builtins.complex"}
    with pytest.raises(ms.UnsafeObjectError) as info:
        decode(node, {"p": pickle.dumps(1j)})
    assert info.value.key == "p" and "allow_pickle=True" in str(info.value)
    assert decode(node, {"p": pickle.dumps(1j)}, allow_pickle=True) == 1j


def test_stand_in_records_tolerate_odd_type_and_field_names():
    nt = decode({"namedtuple": "m:class", "fields": ["a b", "def", "_x", "ok"], "items": [1, 2, 3, 4]})
    assert tuple(nt) == (1, 2, 3, 4) and nt.ok == 4 and type(nt).__name__ == "Record"
    dc = decode({"dataclass": "m:__init__", "fields": [["ok", 1]]})
    assert dc.ok == 1 and type(dc).__name__ == "Record"


def test_unknown_record_types_decode_as_plain_records_without_importing():
    nt = decode({"namedtuple": "os:system", "fields": ["a"], "items": [1]})
    assert nt == (1,) and nt.a == 1 and type(nt).__name__ == "system" and type(nt).__module__ != "os"
    dc = decode({"dataclass": "subprocess:Popen", "fields": [["args", [1]]]})
    assert dataclasses.is_dataclass(dc) and dc.args == [1]


class Celsius:
    def __init__(self, degrees: float):
        self.degrees = degrees


def test_encoders_and_decoders_extend_through_registries(tmp_path):
    register_encoder(Celsius, lambda fl, obj, path: {"test_celsius": fl.encode(obj.degrees, path + ("degrees",))})
    register_decoder("test_celsius", lambda un, node: Celsius(un.decode(node["test_celsius"])))
    ms.save({"t": Celsius(21.5)}, tmp_path / "c.safetensors")
    back = ms.load(tmp_path / "c.safetensors")
    assert type(back["t"]) is Celsius and back["t"].degrees == 21.5
