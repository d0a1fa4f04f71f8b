"""Round trips through ms.save / ms.load: every dtype bit-exact, every container kind,
tied tensors, map_location, framework conversion, parameters, metadata."""

from __future__ import annotations

import collections
import dataclasses
import os
import tempfile
from typing import Any

import ml_dtypes
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from safetensors import safe_open

import modelsafe as ms

from treecheck import assert_same, tensor_bytes

pytestmark = pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")

TORCH_DTYPES = [
    torch.bool, torch.uint8, torch.uint16, torch.uint32, torch.uint64,
    torch.int8, torch.int16, torch.int32, torch.int64,
    torch.float16, torch.bfloat16, torch.float32, torch.float64,
    torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz, torch.float8_e8m0fnu,
    torch.complex32, torch.complex64, torch.complex128,
]
NUMPY_DTYPES = [
    np.dtype(t) for t in (
        np.bool_, np.uint8, np.uint16, np.uint32, np.uint64, np.int8, np.int16, np.int32, np.int64,
        np.float16, np.float32, np.float64, np.complex64, np.complex128,
        ml_dtypes.bfloat16, ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e5m2, ml_dtypes.float8_e4m3fnuz,
        ml_dtypes.float8_e5m2fnuz, ml_dtypes.float8_e8m0fnu,
    )
]

Point = collections.namedtuple("Point", "x y")


@dataclasses.dataclass
class Pair:
    first: Any
    second: Any


@pytest.fixture(scope="module")
def scratch():
    with tempfile.TemporaryDirectory() as d:
        yield os.path.join(d, "roundtrip.safetensors")


def roundtrip(obj, path, **load_kwargs):
    ms.save(obj, path)
    return ms.load(path, **load_kwargs)


# -- strategies ---------------------------------------------------------------------

shapes = st.lists(st.integers(0, 4), min_size=0, max_size=4).map(tuple)


@st.composite
def raw_tensors(draw, dtypes=TORCH_DTYPES):
    """A torch tensor of any dtype and shape filled with arbitrary bits (NaN payloads included)."""
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(shapes)
    count = int(np.prod(shape, dtype=np.int64))
    data = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
    flat = torch.tensor(list(data), dtype=torch.uint8)
    if dtype == torch.bool:
        flat = flat % 2
    t = flat.view(dtype) if count else torch.empty(0, dtype=dtype)
    return t.reshape(shape)


@st.composite
def torch_views(draw):
    """Contiguous tensors and non-contiguous views of them (transposed, sliced, expanded, narrowed)."""
    t = draw(raw_tensors())
    how = draw(st.sampled_from(["plain", "transpose", "slice", "expand", "narrow", "permute"]))
    if how == "transpose" and t.dim() >= 2:
        return t.transpose(0, t.dim() - 1)
    if how == "slice" and t.dim() >= 1:
        return t[::2]
    if how == "expand":
        return t.reshape(-1)[:1].reshape(()).expand(3, 2) if t.numel() else t
    if how == "narrow" and t.dim() >= 1 and t.shape[-1] >= 2:
        return t.narrow(-1, 1, t.shape[-1] - 1)
    if how == "permute" and t.dim() >= 3:
        return t.movedim(-1, 0)
    return t


@st.composite
def numpy_arrays(draw):
    dtype = draw(st.sampled_from(NUMPY_DTYPES))
    shape = draw(shapes)
    count = int(np.prod(shape, dtype=np.int64))
    data = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
    arr = np.frombuffer(data, np.uint8).copy()
    if dtype == np.bool_:
        arr %= 2
    arr = arr.view(dtype).reshape(shape)
    how = draw(st.sampled_from(["plain", "transpose", "slice", "reverse", "broadcast", "bigendian", "scalar"]))
    if how == "transpose":
        return arr.T
    if how == "slice" and arr.ndim:
        return arr[::2]
    if how == "reverse" and arr.ndim:
        return arr[::-1]
    if how == "broadcast" and arr.size:
        return np.broadcast_to(arr.reshape(-1)[:1], (2, 3))
    if how == "bigendian" and dtype.kind in "iufc" and dtype.itemsize > 1 and dtype.name in np.sctypeDict:
        return arr.astype(dtype.newbyteorder(">"))
    if how == "scalar" and arr.size:
        return arr.reshape(-1)[0]  # a numpy scalar (np.generic)
    return arr


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from([float("nan"), float("inf"), float("-inf"), -0.0, 2.0**53 + 1, 5e-324])
    | st.text(max_size=8)
    | st.binary(max_size=16)
)
keys = st.text(max_size=6) | st.integers(min_value=-(2**60), max_value=2**60)


def containers(children):
    return (
        st.lists(children, max_size=4)
        | st.lists(children, max_size=4).map(tuple)
        | st.dictionaries(keys, children, max_size=4)
        | st.dictionaries(st.text(max_size=6), children, max_size=4).map(collections.OrderedDict)
        | st.builds(Point, children, children)
        | st.builds(Pair, children, children)
        | st.frozensets(st.integers(-(2**60), 2**60) | st.text(max_size=4), max_size=4).map(set)
    )


def trees(leaves):
    return st.recursive(leaves, containers, max_leaves=12)


# -- dtypes and shapes --------------------------------------------------------------

@given(t=torch_views())
def test_torch_tensor_roundtrip_bit_exact(scratch, t):
    assert_same(t, roundtrip(t, scratch))


@given(a=numpy_arrays())
def test_numpy_array_roundtrip_bit_exact(scratch, a):
    back = roundtrip(a, scratch)
    assert_same(a, back)


@pytest.mark.parametrize("dtype", TORCH_DTYPES, ids=str)
def test_every_torch_dtype_in_one_file(tmp_path, dtype):
    """Each dtype with 0-d, empty, contiguous and non-contiguous tensors side by side."""
    bits = torch.arange(192, dtype=torch.uint8).mul_(37)
    if dtype == torch.bool:
        bits %= 2
    base = bits[: 12 * dtype.itemsize].view(dtype).reshape(3, 4)
    obj = {
        "matrix": base,
        "transposed": base.t(),
        "sliced": base[:, 1::2],
        "scalar": base[1, 2].clone(),
        "empty": torch.empty(0, 3, dtype=dtype),
        "expanded": base[0:1].expand(5, 4),
    }
    back = roundtrip(obj, tmp_path / "d.safetensors")
    assert_same(obj, back)
    assert back["scalar"].dim() == 0 and back["empty"].shape == (0, 3)


def test_special_float_values_bit_exact(tmp_path):
    values = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-45, 65504.0, -1.5]
    obj = {str(dt): torch.tensor(values, dtype=torch.float32).to(dt)
           for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}
    obj["neg_nan"] = torch.tensor([0x7FC00001, 0xFFC00000], dtype=torch.int64).to(torch.int32).view(torch.float32)
    assert_same(obj, roundtrip(obj, tmp_path / "f.safetensors"))


def test_conj_and_neg_views_are_resolved(tmp_path):
    z = torch.tensor([1 + 2j, -3 - 4j], dtype=torch.complex64)
    obj = {"conj": z.conj(), "neg": torch.tensor([1.0, -2.0])._neg_view()}
    back = roundtrip(obj, tmp_path / "c.safetensors")
    assert back["conj"].tolist() == [1 - 2j, -3 + 4j]
    assert back["neg"].tolist() == [-1.0, 2.0]


# -- containers and scalars -----------------------------------------------------------

@given(obj=trees(json_scalars | raw_tensors() | numpy_arrays()))
def test_tree_roundtrip(scratch, obj):
    assert_same(obj, roundtrip(obj, scratch))


def test_every_node_kind_keeps_its_type(tmp_path):
    t = torch.arange(4.0)
    sd = torch.nn.Linear(2, 2).state_dict()
    obj = {
        "tuple": (1, (2, 3), ()),
        "list": [1, [2], []],
        7: "int key",
        -(2**70): "huge int key",
        "point": Point(t, [1, 2]),
        "pair": Pair(first=(1, 2), second={"x": t * 2}),
        "ordered": collections.OrderedDict([("b", 1), ("a", 2)]),
        "state_dict": sd,
        "set": {1, 2, "three"},
        "frozenset": frozenset({4, 5}),
        "scalars": [None, True, False, 0, -1, 2**53, 2**53 + 1, -(2**64) - 3, 1.5, -0.0],
        "special": [float("nan"), float("inf"), float("-inf")],
        "text": ["", "日本語 ✓ \u0000 \ud7ff", "emoji 🎉"],
        "bytes": [b"", b"\x00\xff" * 10],
        "bytearray": bytearray(b"abc"),
        "empty_dict": {},
    }
    back = roundtrip(obj, tmp_path / "n.safetensors")
    assert_same(obj, back)
    assert type(back["point"]) is Point and type(back["pair"]) is Pair
    assert back["state_dict"]._metadata == sd._metadata


def test_int_keys_are_not_strings_and_ints_beyond_2_53_are_exact(tmp_path):
    obj = {1: "a", "1": "b", 2**63: [2**63 - 1, -(2**63)], 10**30: 10**30 + 1}
    back = roundtrip(obj, tmp_path / "k.safetensors")
    assert back == obj and [type(k) for k in back] == [int, str, int, int]
    assert back[10**30] == 10**30 + 1


def test_unknown_dataclass_and_namedtuple_types_still_load_as_records(tmp_path):
    """A type that is not importable any more comes back as an equivalent record, never code."""
    path = tmp_path / "r.safetensors"
    ms.save({"p": Point(1, 2), "q": Pair(3, 4)}, path)
    from craft import edit_manifest

    def rename(manifest):
        for _, node in manifest["tree"]["dict"]:
            for tag in ("namedtuple", "dataclass"):
                if tag in node:
                    node[tag] = "gone.module:" + node[tag].split(":")[1]

    edit_manifest(path, rename)
    back = ms.load(path)
    assert tuple(back["p"]) == (1, 2) and back["p"].x == 1 and back["p"]._fields == ("x", "y")
    assert (back["q"].first, back["q"].second) == (3, 4) and dataclasses.is_dataclass(back["q"])


# -- state_dicts, names, tied tensors ---------------------------------------------------

class TiedLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.body = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.LayerNorm(4))
        self.head = torch.nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("steps", torch.tensor(3))


def test_state_dict_keeps_keys_as_tensor_names(tmp_path):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Linear(4, 4))
    sd = model.state_dict()
    path = tmp_path / "sd.safetensors"
    ms.save(sd, path)
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == set(sd.keys())
        for key in sd:
            assert torch.equal(f.get_tensor(key), sd[key])
    back = ms.load(path)
    assert type(back) is collections.OrderedDict and list(back) == list(sd)
    assert back._metadata == sd._metadata
    assert_same(sd, back)
    model2 = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Linear(4, 4))
    model2.load_state_dict(back)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values()):
        assert torch.equal(a, b)


def test_tied_weights_are_stored_once_and_come_back_tied(tmp_path):
    model = TiedLM()
    sd = model.state_dict()
    path = tmp_path / "tied.safetensors"
    ms.save(sd, path)
    back = ms.load(path)
    assert back["head.weight"] is back["embed.weight"]
    assert torch.equal(back["head.weight"], model.embed.weight.detach())
    with safe_open(str(path), framework="pt") as f:
        stored = set(f.keys())
    assert len(stored) == len(sd) - 1 and ("head.weight" in stored) != ("embed.weight" in stored)
    with ms.open(path) as reader:
        assert list(reader.keys()) == list(sd.keys())
        assert torch.equal(reader["head.weight"], reader["embed.weight"])
    # the whole tied module round-trips through load_state_dict too
    fresh = TiedLM()
    fresh.load_state_dict(back)
    assert torch.equal(fresh.head.weight, model.head.weight)


def test_same_tensor_twice_and_views_of_one_storage(tmp_path):
    t = torch.arange(12.0).reshape(3, 4)
    a = np.arange(6)
    obj = {"t": t, "again": [t, (t,)], "row": t[1], "tt": t.t(), "a": a, "a2": a}
    back = roundtrip(obj, tmp_path / "same.safetensors")
    assert back["again"][0] is back["t"] and back["again"][1][0] is back["t"]
    assert back["a2"] is back["a"]
    assert_same(obj, back)


def test_views_with_other_values_or_types_are_not_tied(tmp_path):
    """Same memory but different values (conj/neg views) or types (Parameter vs tensor) are not ties."""
    z = torch.tensor([1 + 2j, 3 - 1j])
    x = torch.tensor([1.0, -2.0])
    p = torch.nn.Parameter(torch.ones(2))
    obj = {"z": z, "zc": z.conj(), "x": x, "xn": x._neg_view(), "p": p, "p_again": p, "p_data": p.data,
           "p_detached": p.detach()}
    back = roundtrip(obj, tmp_path / "views.safetensors")
    assert back["zc"].tolist() == [1 - 2j, 3 + 1j] and back["z"].tolist() == [1 + 2j, 3 - 1j]
    assert back["xn"].tolist() == [-1.0, 2.0] and back["x"].tolist() == [1.0, -2.0]
    assert back["p_again"] is back["p"] and type(back["p"]) is torch.nn.Parameter
    assert type(back["p_data"]) is torch.Tensor and type(back["p_detached"]) is torch.Tensor
    assert not back["p_data"].requires_grad


def test_parameters_and_requires_grad_are_preserved(tmp_path):
    obj = {
        "param": torch.nn.Parameter(torch.ones(2)),
        "frozen": torch.nn.Parameter(torch.ones(2), requires_grad=False),
        "grad": torch.ones(2, requires_grad=True),
        "plain": torch.ones(2),
    }
    back = roundtrip(obj, tmp_path / "p.safetensors")
    assert type(back["param"]) is torch.nn.Parameter and back["param"].requires_grad
    assert type(back["frozen"]) is torch.nn.Parameter and not back["frozen"].requires_grad
    assert type(back["grad"]) is torch.Tensor and back["grad"].requires_grad
    assert type(back["plain"]) is torch.Tensor and not back["plain"].requires_grad


def test_loaded_tensors_are_writable_and_independent_of_the_file(tmp_path):
    path = tmp_path / "w.safetensors"
    ms.save({"t": torch.zeros(4), "a": np.zeros(4)}, path)
    back = ms.load(path)
    back["t"] += 1
    back["a"] += 1
    assert ms.load(path)["t"].tolist() == [0.0] * 4 and ms.load(path)["a"].tolist() == [0.0] * 4


# -- map_location and framework conversion ---------------------------------------------------

@pytest.mark.parametrize(
    "map_location",
    ["meta", torch.device("meta"), {"cpu": "meta"}],
    ids=["str", "device", "dict"],
)
def test_map_location_moves_tensors(tmp_path, map_location):
    path = tmp_path / "m.safetensors"
    ms.save({"w": torch.ones(2, 3), "p": torch.nn.Parameter(torch.ones(2))}, path)
    back = ms.load(path, map_location=map_location)
    assert back["w"].device.type == "meta" and back["w"].shape == (2, 3)
    assert back["p"].device.type == "meta" and isinstance(back["p"], torch.nn.Parameter)


def test_map_location_cpu_forms_keep_values(tmp_path):
    path = tmp_path / "cpu.safetensors"
    ms.save({"w": torch.arange(3.0)}, path)
    for loc in ("cpu", torch.device("cpu"), {"cuda:0": "cpu"}, lambda storage, location: storage):
        back = ms.load(path, map_location=loc)
        assert back["w"].device.type == "cpu" and back["w"].tolist() == [0.0, 1.0, 2.0]


def test_map_location_callable_gets_tensor_and_saved_location(tmp_path):
    path = tmp_path / "c.safetensors"
    ms.save({"w": torch.arange(3.0)}, path)
    seen = []

    def place(tensor, location):
        seen.append(location)
        return tensor.to("meta")

    back = ms.load(path, map_location=place)
    assert seen == ["cpu"] and back["w"].device.type == "meta"


def test_map_location_dict_leaves_unlisted_devices_alone(tmp_path):
    path = tmp_path / "d.safetensors"
    ms.save({"w": torch.arange(3.0)}, path)
    assert ms.load(path, map_location={"cuda:1": "meta"})["w"].device.type == "cpu"


@given(t=raw_tensors(dtypes=[d for d in TORCH_DTYPES if d != torch.complex32]))
def test_torch_saved_loads_as_numpy_bit_exact(scratch, t):
    back = roundtrip(t, scratch, framework="numpy")
    assert isinstance(back, np.ndarray)
    assert back.shape == tuple(t.shape)
    assert back.dtype.name == str(t.dtype).removeprefix("torch.")
    assert tensor_bytes(back) == tensor_bytes(t)


def test_bfloat16_to_numpy_uses_ml_dtypes(tmp_path):
    t = torch.tensor([1.5, -2.25, float("inf")], dtype=torch.bfloat16)
    back = roundtrip(t, tmp_path / "b.safetensors", framework="numpy")
    assert back.dtype == np.dtype(ml_dtypes.bfloat16)
    assert back.astype(np.float32).tolist() == [1.5, -2.25, float("inf")]


def test_complex32_to_numpy_is_a_clear_error(tmp_path):
    path = tmp_path / "c32.safetensors"
    ms.save({"z": torch.zeros(2, dtype=torch.complex32)}, path)
    with pytest.raises(ms.ModelsafeError, match="complex32"):
        ms.load(path, framework="numpy")


@given(a=numpy_arrays())
def test_numpy_saved_loads_as_torch_bit_exact(scratch, a):
    back = roundtrip(a, scratch, framework="torch")
    assert isinstance(back, torch.Tensor)
    assert tuple(back.shape) == np.shape(a)
    assert str(back.dtype).removeprefix("torch.") == np.asarray(a).dtype.name
    assert tensor_bytes(back) == tensor_bytes(a)


def test_mixed_frameworks_come_back_as_saved(tmp_path):
    obj = {"t": torch.ones(2), "a": np.ones(2), "t2": torch.zeros(3, dtype=torch.int8)}
    back = roundtrip(obj, tmp_path / "mixed.safetensors")
    assert_same(obj, back)
    as_np = ms.load(tmp_path / "mixed.safetensors", framework="numpy")
    assert all(isinstance(v, np.ndarray) for v in as_np.values())


# -- metadata --------------------------------------------------------------------------

def test_metadata_round_trip(tmp_path):
    path = tmp_path / "meta.safetensors"
    metadata = {"epoch": 3, "loss": 0.25, "note": "ünïcode", "tags": ["a", "b"], "nested": {"x": None, "big": 2**60},
                "nan": float("nan")}
    ms.save({"w": torch.ones(1)}, path, metadata=metadata)
    with ms.open(path) as reader:
        got = reader.metadata
    assert {k: v for k, v in got.items() if k != "nan"} == {k: v for k, v in metadata.items() if k != "nan"}
    assert got["nan"] != got["nan"]
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["note"] == "ünïcode"  # string metadata is visible to plain safetensors readers


def test_metadata_refuses_tensors(tmp_path):
    with pytest.raises(ms.UnsupportedObjectError, match=r'metadata\["w"\]'):
        ms.save({}, tmp_path / "x.safetensors", metadata={"w": torch.ones(1)})
    assert not (tmp_path / "x.safetensors").exists()


def test_empty_and_tensorless_trees(tmp_path):
    for obj in ({}, [], (), None, 5, "text", {"only": [1, 2.5, None]}):
        assert_same(obj, roundtrip(obj, tmp_path / "e.safetensors"))


def test_non_string_dict_keys_keep_their_types(tmp_path):
    obj = {True: "bool", 2.5: "float", None: "none", (1, "a", (2,)): "tuple", frozenset({3}): "fs", -7: "int",
           float("inf"): "inf"}
    back = roundtrip(obj, tmp_path / "keys.safetensors")
    assert back == obj
    assert [type(k) for k in back] == [type(k) for k in obj]


# -- ms.open agrees with ms.load; ties survive any tree -------------------------------------

@st.composite
def trees_with_shared_tensors(draw):
    """Trees whose tensors are drawn from a small pool, so the same object often appears twice."""
    pool = draw(st.lists(raw_tensors() | numpy_arrays(), min_size=1, max_size=3))
    return draw(trees(json_scalars | st.sampled_from(pool)))


def _leaves(obj, out):
    if isinstance(obj, (torch.Tensor, np.ndarray, np.generic)):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _leaves(v, out)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            _leaves(getattr(obj, f.name), out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _leaves(v, out)
    return out


def _nonempty(t) -> bool:
    """Tensors that can be tied (empty tensors and numpy scalars have no storage to share)."""
    if isinstance(t, np.generic):
        return False
    return bool(t.numel() if isinstance(t, torch.Tensor) else t.size)


@given(obj=trees_with_shared_tensors())
def test_shared_tensors_come_back_shared(scratch, obj):
    back = roundtrip(obj, scratch)
    assert_same(obj, back)
    saved, loaded = _leaves(obj, []), _leaves(back, [])
    assert len(saved) == len(loaded)
    for i in range(len(saved)):
        for j in range(i + 1, len(saved)):
            if saved[i] is saved[j] and _nonempty(saved[i]):
                assert loaded[i] is loaded[j], "a tensor saved twice came back as two objects"


@given(obj=trees(json_scalars | raw_tensors() | numpy_arrays()))
def test_open_reads_every_tensor_as_load_does(scratch, obj):
    from modelsafe.tree import walk_refs

    ms.save(obj, scratch)
    loaded = ms.load(scratch)
    with ms.open(scratch) as reader:
        keys = reader.keys()
        assert len(keys) == len(set(keys)) == len(reader)
        assert all(key in reader for key in keys)
        assert_same(loaded, reader.load())
        names = [name for tag, name in walk_refs(reader.manifest["tree"]) if tag == "tensor"]
        leaves = _leaves(loaded, [])
        assert len(names) == len(leaves)
        assert [n for n in keys if n in names] == list(dict.fromkeys(names))  # keys() in tree order
        for name, leaf in zip(names, leaves):
            assert_same(leaf, reader[name], name)
