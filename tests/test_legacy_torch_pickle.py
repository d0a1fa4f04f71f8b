"""The allowlist torch reader against torch.load itself (the oracle, used only here in tests).

Every object torch.save writes for tensors, state_dicts and checkpoints — zip and legacy
layouts, pickle protocols 2/4/5 — must read back equal to ``torch.load(weights_only=True)``
(bit for bit, same types, same storage sharing), without running code from the file.
Hostile shapes of otherwise valid files (memory bombs, out-of-bounds views, cycles,
reference bombs, TorchScript, whole pickled modules) are refused with our errors.
"""

from __future__ import annotations

import collections
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from modelsafe.errors import CorruptCheckpointError, UnsafeObjectError, UnsupportedObjectError
from modelsafe.legacy import read_foreign
from modelsafe.legacy.torch_pickle import load_torch_file

from legacy_craft import G, assemble, call, persid, tensor_expr, torch_legacy, torch_zip, tup

PY = sys.executable


# -- what torch.save writes ---------------------------------------------------------------

class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(2, 3, 3)
        self.norm = torch.nn.BatchNorm2d(3)
        self.head = torch.nn.Linear(12, 4)

    def forward(self, x):
        return self.head(self.norm(self.conv(x)).flatten(1))


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.out = torch.nn.Linear(4, 10, bias=False)
        self.out.weight = self.embed.weight


def _checkpoint() -> dict:
    torch.manual_seed(0)
    model = Net()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(5, 2, 4, 4)).square().mean().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 7, "loss": 0.4210}


def _training_state() -> dict:
    """What resumable training scripts save: scheduler, AMP scaler, RNG states, SGD momentum buffers."""
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    sched.step()
    return {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "scaler": torch.amp.GradScaler("cpu", enabled=False).state_dict(), "rng": torch.get_rng_state(),
            "generator": torch.Generator().manual_seed(5).get_state(), "history": [0.9, 0.7, float("nan")][:2]}


def _views() -> dict:
    x = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    return {"x": x, "row": x[1], "col": x[:, 2], "t": x.t(), "flat": x.view(-1), "strided": x[::2, 1::3]}


def _dtypes() -> dict:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(3, 5, generator=g)
    out = {str(dt): base.to(dt) for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64,
                                           torch.complex64, torch.complex128)}
    out.update({str(dt): (base * 50).to(dt) for dt in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)})
    out["torch.bool"] = base > 0
    return out


def _edges() -> dict:
    x = torch.randn(4, 6)
    leaf = torch.randn(3).requires_grad_(True)
    return {"scalar": torch.tensor(3.5), "empty": torch.empty(0, 3), "noncontig": x[:, ::2], "grad": leaf,
            "int_scalar": torch.tensor(7), "nested": [(x[0], {"k": [torch.ones(2)]}), {1: "one", 2: None}],
            "text": "hello", "blob": b"\x00\x01\xff", "flag": True, "nothing": None}


CASES = {
    "tensor": lambda: torch.randn(3, 4),
    "state_dict": lambda: Net().state_dict(),
    "checkpoint": _checkpoint,
    "training_state": _training_state,
    "parameter": lambda: torch.nn.Parameter(torch.randn(3)),
    "parameter_frozen": lambda: torch.nn.Parameter(torch.randn(3), requires_grad=False),
    "views": _views,
    "tied": lambda: Tied().state_dict(),
    "dtypes": _dtypes,
    "edges": _edges,
}
# layout name -> torch.save keyword arguments, and whether torch.load(weights_only=True) reads it
LAYOUTS = {
    "zip": ({}, True),
    "legacy": ({"_use_new_zipfile_serialization": False}, True),
    "zip-p4": ({"pickle_protocol": 4}, False),
    "legacy-p5": ({"_use_new_zipfile_serialization": False, "pickle_protocol": 5}, False),
}


def saved(tmp_path, case: str, layout: str):
    torch.manual_seed(0)
    obj = CASES[case]()
    kwargs, weights_only = LAYOUTS[layout]
    path = tmp_path / f"{case}-{layout}.pt"
    torch.save(obj, path, **kwargs)
    return path, torch.load(path, weights_only=weights_only)  # the oracle: our own trusted file


# -- comparing trees ------------------------------------------------------------------------

def tensors_of(obj, out=None) -> list:
    out = [] if out is None else out
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            tensors_of(v, out)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            tensors_of(v, out)
    return out


def assert_same(ours, oracle, where="obj"):
    assert type(ours) is type(oracle), f"{where}: {type(ours)} != {type(oracle)}"
    if isinstance(oracle, torch.Tensor):
        assert ours.dtype == oracle.dtype and ours.shape == oracle.shape, where
        assert ours.stride() == oracle.stride() and ours.storage_offset() == oracle.storage_offset(), where
        assert ours.requires_grad == oracle.requires_grad, where
        a, b = ours.detach(), oracle.detach()
        assert torch.equal(a.reshape(-1).contiguous().view(torch.uint8) if a.numel() else a,
                           b.reshape(-1).contiguous().view(torch.uint8) if b.numel() else b), f"{where}: values differ"
    elif isinstance(oracle, dict):
        assert list(ours) == list(oracle), where
        for k in oracle:
            assert_same(ours[k], oracle[k], f"{where}[{k!r}]")
        assert getattr(ours, "_metadata", None) == getattr(oracle, "_metadata", None), f"{where}._metadata"
    elif isinstance(oracle, (list, tuple)):
        assert len(ours) == len(oracle), where
        for i, (a, b) in enumerate(zip(ours, oracle)):
            assert_same(a, b, f"{where}[{i}]")
    else:
        assert ours == oracle, where


def sharing(tensors) -> set:
    """Pairs (i, j) of tensors over the same storage."""
    ptrs = [t.untyped_storage().data_ptr() if t.numel() else None for t in tensors]
    return {(i, j) for i in range(len(ptrs)) for j in range(i + 1, len(ptrs)) if ptrs[i] is not None and ptrs[i] == ptrs[j]}


# -- equality with torch.load -----------------------------------------------------------------

@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_reads_what_torch_load_reads(tmp_path, case, layout):
    path, oracle = saved(tmp_path, case, layout)
    ours = load_torch_file(path)
    assert_same(ours, oracle)
    assert sharing(tensors_of(ours)) == sharing(tensors_of(oracle))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_global_torch_save_writes_is_on_the_allowlist(tmp_path, layout):
    """Disassemble real torch.save output: the allowlist covers what this torch writes, nothing is guessed."""
    from modelsafe.legacy.torch_pickle import ALLOWED_GLOBALS

    from legacy_craft import globals_in, main_pickle

    seen = set()
    for case in CASES:
        path, _ = saved(tmp_path, case, layout)
        seen |= set(globals_in(main_pickle(path, layout.startswith("legacy"))))
    assert seen <= set(ALLOWED_GLOBALS), seen - set(ALLOWED_GLOBALS)
    assert {"torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter", "collections.OrderedDict"} <= seen


def test_tied_weights_share_one_storage(tmp_path):
    path, _ = saved(tmp_path, "tied", "zip")
    sd = load_torch_file(path)
    assert sd["embed.weight"].data_ptr() == sd["out.weight"].data_ptr()
    sd["embed.weight"][0, 0] = 123.0
    assert sd["out.weight"][0, 0] == 123.0


def test_views_share_their_base(tmp_path):
    path, _ = saved(tmp_path, "views", "legacy")
    views = load_torch_file(path)
    views["x"][1, 2] = -1.0
    assert views["row"][2] == -1.0 and views["col"][1] == -1.0 and views["t"][2, 1] == -1.0


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_numpy_output_without_torch_tensors(tmp_path, layout):
    path, oracle = saved(tmp_path, "dtypes", layout)
    ours = load_torch_file(path, framework="numpy")
    for name, t in oracle.items():
        arr = ours[name]
        assert isinstance(arr, np.ndarray), name
        assert arr.shape == tuple(t.shape)
        expected = t.view(torch.int16).numpy().view(arr.dtype) if t.dtype == torch.bfloat16 else t.numpy()
        assert np.array_equal(arr, expected), name


def test_unsigned_dtypes_of_the_zip_layout(tmp_path):
    obj = {str(dt): torch.arange(5).to(dt) for dt in (torch.uint16, torch.uint32, torch.uint64)}
    path = tmp_path / "u.pt"
    torch.save(obj, path)
    assert_same(load_torch_file(path), torch.load(path, weights_only=True))


def test_non_tensor_values_torch_allows(tmp_path):
    obj = {"size": torch.Size([2, 3]), "dtype": torch.bfloat16, "device": torch.device("cpu"), "set": {1, 2},
           "frozen": frozenset({"a"}), "slice": slice(1, 9, 2), "complex": 1 + 2j, "od": collections.OrderedDict(a=1),
           "ba": bytearray(b"xy")}
    for kwargs in ({}, {"_use_new_zipfile_serialization": False}, {"pickle_protocol": 4}):
        path = tmp_path / "misc.pt"
        torch.save(obj, path, **kwargs)
        ours = load_torch_file(path)
        assert ours == obj and type(ours["size"]) is torch.Size and type(ours["od"]) is collections.OrderedDict


NUMPY_VALUES = {
    "array": np.arange(6, dtype=np.float32).reshape(2, 3), "fortran": np.asfortranarray(np.ones((2, 3))),
    "loss": np.float64(0.25), "step": np.int64(3), "mask": np.array([True, False]), "big_endian": np.arange(3, dtype=">i4"),
    "empty": np.empty((0, 2)), "zero_d": np.array(2.5), "half": np.ones(2, np.float16), "cplx": np.array([1 + 2j]),
}


@pytest.mark.parametrize("kwargs", [{}, {"pickle_protocol": 4}, {"pickle_protocol": 5}, {"_use_new_zipfile_serialization": False}])
def test_numpy_values_inside_checkpoints(tmp_path, kwargs):
    path = tmp_path / "np.pt"
    torch.save({"numpy": NUMPY_VALUES, "w": torch.ones(2)}, path, **kwargs)
    oracle = torch.load(path, weights_only=False)["numpy"]  # our own trusted file; weights_only refuses numpy
    ours = load_torch_file(path)["numpy"]
    for k, v in oracle.items():
        assert type(ours[k]) is type(v), k
        assert ours[k].dtype == v.dtype.newbyteorder("=") and np.array_equal(ours[k], v), k
        if isinstance(v, np.ndarray):
            assert ours[k].shape == v.shape and ours[k].flags.f_contiguous == v.flags.f_contiguous, k


@pytest.mark.parametrize(
    "expr, error, match",
    [
        (call(G("numpy", "dtype"), "O8", False, True), UnsafeObjectError, "object array"),
        (call(G("numpy", "dtype"), "U5", False, True), CorruptCheckpointError, "not a plain numeric dtype"),
        (call(G("numpy._core.numeric", "_frombuffer"), b"\0" * 7, call(G("numpy", "dtype"), "f4", False, True), tup(2), "C"),
         CorruptCheckpointError, "needs 8 bytes"),
        (call(G("numpy._core.multiarray", "scalar"), call(G("numpy", "dtype"), "f8", False, True), b"\0" * 3),
         CorruptCheckpointError, "one element"),
        (call(G("numpy._core.multiarray", "_reconstruct"), G("torch", "FloatStorage"), tup(0), b"b"),
         CorruptCheckpointError, "only build numpy.ndarray"),
        (call(G("numpy._core.multiarray", "_reconstruct"), G("numpy", "ndarray"), tup(0), b"b"),
         CorruptCheckpointError, "never given its data"),
    ],
)
def test_hostile_numpy_constructs(tmp_path, expr, error, match):
    path = tmp_path / "np.pkl"
    path.write_bytes(assemble({"x": expr}, 2)[0])
    with pytest.raises(error, match=match):
        load_torch_file(path)


def test_numpy_classes_cannot_be_instantiated_behind_their_checks(tmp_path):
    path = tmp_path / "newobj.pkl"
    path.write_bytes(b"\x80\x02cnumpy\ndtype\n)\x81.")  # NEWOBJ: dtype.__new__ without __init__
    with pytest.raises(CorruptCheckpointError):
        load_torch_file(path)


def test_big_endian_zip_files_are_swapped(tmp_path):
    obj = {"f": torch.randn(3, 2), "h": torch.randn(4).half(), "c": torch.randn(2, dtype=torch.complex64),
           "i": torch.arange(5), "b": torch.tensor([True, False])}
    little = tmp_path / "little.pt"
    torch.save(obj, little)
    big = tmp_path / "big.pt"
    with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
        dtypes_by_key = {}
        pkl = next(n for n in src.namelist() if n.endswith("data.pkl"))
        ours = load_torch_file(little)
        for name, t in ours.items():  # which record holds which dtype: match by bytes
            for n in src.namelist():
                if "/data/" in n and src.read(n) == t.numpy().tobytes():
                    dtypes_by_key[n] = t.numpy().dtype
        for n in src.namelist():
            data = src.read(n)
            if n.endswith("byteorder"):
                data = b"big"
            elif n in dtypes_by_key:
                dt = dtypes_by_key[n]
                data = np.frombuffer(data, dt).astype(dt.newbyteorder(">")).tobytes()
            dst.writestr(n, data)
        assert pkl
    found = read_foreign(big)
    assert any("big-endian" in note for note in found.notes)
    assert_same(found.tree, obj)


# -- refusals -----------------------------------------------------------------------------------

def test_torchscript_archives_are_refused(tmp_path):
    path = tmp_path / "scripted.pt"
    torch.jit.script(torch.nn.Linear(2, 2)).save(str(path))
    with pytest.raises(UnsafeObjectError, match="TorchScript") as exc:
        load_torch_file(path)
    assert str(path) in str(exc.value)


def test_whole_pickled_modules_are_refused_with_advice(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(Net(), path)
    with pytest.raises(UnsafeObjectError, match=r"test_legacy_torch_pickle\.Net|torch\.nn") as exc:
        load_torch_file(path)
    assert "state_dict" in str(exc.value)


def test_plain_pickles_of_plain_values_read(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"lr": 0.1, "steps": [1, 2], "name": "x"}, protocol=2))
    assert load_torch_file(path) == {"lr": 0.1, "steps": [1, 2], "name": "x"}


FLOATS = np.arange(4, dtype=np.float32).tobytes()


def _zip_with(tmp_path, expr, records=None, protocol=2):
    data, _ = assemble(expr, protocol)
    path = tmp_path / "crafted.pt"
    torch_zip(path, data, {"0": FLOATS} if records is None else records)
    return path


@pytest.mark.parametrize(
    "expr, match",
    [
        ({"w": tensor_expr("0", 4, shape=(5,))}, "reaches element"),                       # view past the end
        ({"w": tensor_expr("0", 4, shape=(2, 2), stride=(3, 1))}, "reaches element"),
        ({"w": tensor_expr("0", 4, offset=1)}, "reaches element"),
        ({"w": tensor_expr("0", 4, shape=(-1,))}, "negative"),
        ({"w": tensor_expr("1", 4)}, "missing"),                                            # no such record
        ({"w": tensor_expr("0", 5)}, "declares 5 x float32"),                               # record too small
        ({"w": tensor_expr("../0", 4)}, "not valid"),
        ({"w": tensor_expr("0", 4, storage="DoubleStorage")}, "declares 4 x float64"),
        ({"w": call(G("torch._utils", "_rebuild_tensor_v2"), persid(tup("storage", "notatype", "0", "cpu", 4)), 0,
                    tup(4), tup(1), False, call(G("collections", "OrderedDict")))}, "not a storage type"),
        ({"w": call(G("torch._utils", "_rebuild_tensor_v2"), persid(tup("weird", 1)), 0, tup(4), tup(1), False,
                    None)}, "unknown persistent id"),
        ({"w": call(G("torch._utils", "_rebuild_tensor_v2"), "notastorage", 0, tup(4), tup(1), False, None)},
         "not a storage"),
        ({"b": call(G("_codecs", "encode"), "x", "rot13")}, "latin-1 bytes only"),
        ({"s": call(G("builtins", "set"), 5)}, "set needs a list"),
    ],
)
def test_hostile_but_allowlisted_constructs_are_refused(tmp_path, expr, match):
    path = _zip_with(tmp_path, expr)
    with pytest.raises(CorruptCheckpointError, match=match) as exc:
        load_torch_file(path)
    assert str(path) in str(exc.value)


def test_zip_files_without_a_byteorder_record_are_little_endian(tmp_path):
    data, _ = assemble({"w": tensor_expr("0", 4)}, 2)
    path = tmp_path / "old.pt"
    torch_zip(path, data, {"0": FLOATS}, byteorder=None)
    assert torch.equal(load_torch_file(path)["w"], torch.load(path, weights_only=True)["w"])


def test_legacy_storage_views(tmp_path):
    """Old torch wrote storage views as (view_key, offset, size) in the persistent id."""
    view = tup("storage", G("torch", "FloatStorage"), "0", "cpu", 4, tup("v", 1, 2))
    expr = {"whole": tensor_expr("0", 4, legacy=True),
            "part": call(G("torch._utils", "_rebuild_tensor_v2"), persid(view), 0, tup(2), tup(1), False,
                         call(G("collections", "OrderedDict")))}
    data, _ = assemble(expr, 2)
    path = tmp_path / "views.pt"
    torch_legacy(path, data, [("0", 4, FLOATS)])
    ours, oracle = load_torch_file(path), torch.load(path, weights_only=True)
    assert torch.equal(ours["part"], oracle["part"]) and torch.equal(ours["part"], torch.tensor([1.0, 2.0]))
    ours["whole"][1] = 9.0
    assert ours["part"][0] == 9.0  # the view shares the root storage, as in torch


def test_storages_saved_on_a_gpu_are_read_as_cpu_tensors(tmp_path):
    pid = tup("storage", G("torch", "FloatStorage"), "0", "cuda:0", 4)
    expr = {"w": call(G("torch._utils", "_rebuild_tensor_v2"), persid(pid), 0, tup(2, 2), tup(2, 1), False,
                      call(G("collections", "OrderedDict")))}
    path = _zip_with(tmp_path, expr)
    found = read_foreign(path)
    assert torch.equal(found.tree["w"], torch.load(path, weights_only=True, map_location="cpu")["w"])
    assert found.tree["w"].device.type == "cpu" and any("cuda:0" in n for n in found.notes)


def test_unsupported_tensor_kinds_say_what_to_do(tmp_path):
    path = tmp_path / "sparse.pt"
    torch.save({"s": torch.eye(3).to_sparse()}, path)
    with pytest.raises(UnsupportedObjectError, match="sparse"):
        load_torch_file(path)
    path = tmp_path / "q.pt"
    torch.save({"q": torch.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.qint8)}, path)
    with pytest.raises(UnsupportedObjectError, match="quantized"):
        load_torch_file(path)
    tagged = torch.ones(2)
    tagged.note = "python attribute"
    path = tmp_path / "attr.pt"
    torch.save({"t": tagged}, path)
    with pytest.raises(UnsupportedObjectError, match="Python attributes") as exc:
        load_torch_file(path)
    assert str(path) in str(exc.value) and exc.value.path == str(path)


def test_extension_opcodes_are_refused_before_unpickling(tmp_path):
    path = tmp_path / "ext.pkl"
    path.write_bytes(b"\x80\x02\x82\x01.")  # EXT1 code 1
    with pytest.raises(UnsafeObjectError, match="EXT1"):
        load_torch_file(path)


def test_reference_cycles_and_reference_bombs_are_refused(tmp_path):
    path = tmp_path / "cycle.pkl"
    path.write_bytes(b"\x80\x02]q\x00h\x00a.")  # l = []; l.append(l)
    with pytest.raises(CorruptCheckpointError, match="cycle"):
        load_torch_file(path)
    # t_i = (t_{i-1}, t_{i-1}), 64 levels: 129 objects in memory, 2**65 nodes once expanded
    bomb = bytearray(b"\x80\x02]q\x000")
    for i in range(1, 65):
        bomb += b"h" + bytes([i - 1]) + b"h" + bytes([i - 1]) + b"\x86q" + bytes([i]) + b"0"
    bomb += b"h" + bytes([64]) + b"."
    path = tmp_path / "bomb.pkl"
    path.write_bytes(bytes(bomb))
    with pytest.raises(CorruptCheckpointError, match="expand to"):
        load_torch_file(path)


def test_deep_nesting_is_refused_cleanly(tmp_path):
    path = tmp_path / "deep.pkl"
    path.write_bytes(b"\x80\x02" + b"]" * 100_000 + b"a" * 99_999 + b".")  # 100,000 nested lists
    with pytest.raises(CorruptCheckpointError, match="nest"):
        load_torch_file(path)
    shallow = tmp_path / "shallow.pkl"
    shallow.write_bytes(b"\x80\x02" + b"]" * 100 + b"a" * 99 + b".")
    value = load_torch_file(shallow)
    for _ in range(99):
        value = value[0]
    assert value == []


def test_broadcast_views_cannot_expand_into_a_memory_bomb(tmp_path):
    expr = {"w": tensor_expr("0", 1, storage="FloatStorage", shape=(1 << 20, 1 << 20), stride=(0, 0))}
    path = _zip_with(tmp_path, expr, records={"0": FLOATS[:4]})
    with pytest.raises(CorruptCheckpointError, match="refused before allocating"):
        load_torch_file(path)
    small = _zip_with(tmp_path, {"w": tensor_expr("0", 1, shape=(3, 2), stride=(0, 0))}, records={"0": FLOATS[:4]})
    assert torch.equal(load_torch_file(small)["w"], torch.zeros(3, 2))  # a modest expand() still reads


_BOMB_SCRIPT = textwrap.dedent(
    """
    import resource, sys, json
    import numpy as np, torch
    from modelsafe.legacy.torch_pickle import load_torch_file
    from modelsafe.errors import ModelsafeError
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
    limit = vm + (512 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        np.empty(8 << 30, np.uint8)      # the limit is real: 8 GiB cannot be had
        control = "allocated"
    except MemoryError:
        control = "refused"
    out = {"control": control}
    for path in sys.argv[1:]:
        try:
            load_torch_file(path)
            out[path] = "loaded"
        except ModelsafeError as exc:
            out[path] = type(exc).__name__ + ": " + str(exc)
        except MemoryError:
            out[path] = "MemoryError"
    print(json.dumps(out))
    """
)


def test_memory_bombs_are_refused_before_allocating(tmp_path):
    """Tiny files declaring gigabytes, in both layouts, under RLIMIT_AS in a subprocess."""
    huge = 4 << 30  # elements: 16 GiB of float32
    zip_bomb = tmp_path / "zipbomb.pt"
    data, _ = assemble({"w": tensor_expr("0", huge)}, 2)
    torch_zip(zip_bomb, data, {"0": FLOATS})
    legacy_bomb = tmp_path / "legacybomb.pt"
    data, _ = assemble({"w": tensor_expr("0", huge, legacy=True)}, 2)
    torch_legacy(legacy_bomb, data, [("0", huge, FLOATS)])
    legacy_count_bomb = tmp_path / "legacycount.pt"  # pickle and count agree, the bytes are not there
    data, _ = assemble({"w": tensor_expr("0", 1 << 31, storage="ByteStorage", legacy=True)}, 2)
    torch_legacy(legacy_count_bomb, data, [("0", 1 << 31, b"\0" * 16)])
    memo_bomb = tmp_path / "memo.pkl"  # CPython's unpickler would zero a 16 GiB memo table for this slot
    memo_bomb.write_bytes(b"\x80\x02Nr\xff\xff\xff\x7f.")
    bombs = (zip_bomb, legacy_bomb, legacy_count_bomb, memo_bomb)
    for p in bombs:
        assert os.path.getsize(p) < 2048
    script = tmp_path / "bomb.py"
    script.write_text(_BOMB_SCRIPT)
    proc = subprocess.run([PY, str(script), *map(str, bombs)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json

    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["control"] == "refused"
    for p in bombs:
        assert out[str(p)].startswith("CorruptCheckpointError") and "before allocating" in out[str(p)], out[str(p)]


def test_flipped_bits_in_zip_records_fail_their_crc(tmp_path):
    path = tmp_path / "w.pt"
    torch.save({"w": torch.arange(1000, dtype=torch.float32)}, path)
    blob = bytearray(path.read_bytes())
    at = blob.find(torch.arange(1000, dtype=torch.float32).numpy().tobytes()[400:420]) + 3
    blob[at] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(CorruptCheckpointError, match="CRC-32") as exc:
        load_torch_file(path)
    assert exc.value.key.endswith("data/0")


def test_damaged_files_are_corrupt_not_crashes(tmp_path):
    path, _ = saved(tmp_path, "checkpoint", "legacy")
    blob = path.read_bytes()
    rng = np.random.default_rng(0)
    for cut in sorted(set(rng.integers(1, len(blob), 40).tolist())):
        damaged = tmp_path / "cut.pt"
        damaged.write_bytes(blob[:cut])
        with pytest.raises((CorruptCheckpointError, UnsafeObjectError)):
            load_torch_file(damaged)
    zpath, _ = saved(tmp_path, "state_dict", "zip")
    zblob = zpath.read_bytes()
    for cut in sorted(set(rng.integers(1, len(zblob), 20).tolist())):
        damaged = tmp_path / "zcut.pt"
        damaged.write_bytes(zblob[:cut])
        with pytest.raises(CorruptCheckpointError):
            load_torch_file(damaged)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_files_read_or_raise_our_errors(tmp_path, data):
    """Random byte edits of real torch files (zip pickles re-zipped so the edit reaches the parser, and
    legacy files as they are): reading either succeeds or raises a ModelsafeError, nothing else."""
    import io as _io

    from modelsafe.errors import ModelsafeError

    legacy = data.draw(st.booleans(), label="legacy")
    case = data.draw(st.sampled_from(["checkpoint", "edges", "views", "tied"]), label="case")
    key = (case, legacy)
    if key not in _MUTATION_SOURCES:
        path, _ = saved(tmp_path, case, "legacy" if legacy else "zip")
        blob = path.read_bytes()
        if legacy:
            _MUTATION_SOURCES[key] = (blob, None)
        else:
            with zipfile.ZipFile(_io.BytesIO(blob)) as z:
                _MUTATION_SOURCES[key] = (None, {n: z.read(n) for n in z.namelist()})
    blob, records = _MUTATION_SOURCES[key]
    target = bytearray(blob if legacy else records[next(n for n in records if n.endswith("data.pkl"))])
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        at = data.draw(st.integers(0, len(target) - 1), label="at")
        target[at] = data.draw(st.integers(0, 255), label="byte")
    path = tmp_path / "mutated.pt"
    if legacy:
        path.write_bytes(bytes(target))
    else:
        with zipfile.ZipFile(path, "w") as z:
            for name, content in records.items():
                z.writestr(name, bytes(target) if name.endswith("data.pkl") else content)
    try:
        load_torch_file(path)
    except ModelsafeError:
        pass


_MUTATION_SOURCES: dict = {}


def test_damaged_zip_structure_raises_our_errors(tmp_path):
    from modelsafe.errors import ModelsafeError

    path, _ = saved(tmp_path, "state_dict", "zip")
    blob = path.read_bytes()
    rng = np.random.default_rng(3)
    tail = len(blob) - 2048  # the central directory and local headers live here and at record starts
    for i in range(150):
        damaged = bytearray(blob)
        for at in rng.integers(max(tail, 0), len(blob), 3):
            damaged[at] = int(rng.integers(0, 256))
        at = int(rng.integers(0, len(blob)))
        damaged[at] = int(rng.integers(0, 256))
        target = tmp_path / "damaged.pt"
        target.write_bytes(bytes(damaged))
        try:
            read_foreign(target)
        except ModelsafeError:
            pass
