"""convert and the legacy readers are bounded by what the input really holds, and validate every field.

The rule (docs/convert.md): the tensor bytes a read produces may be at most ``max_expansion``
(default 8) times the input's size on disk plus 64 MiB, checked before anything is allocated.
Memory is checked in a child process under RLIMIT_AS; output size by the written file.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import modelsafe as ms
import modelsafe.legacy as legacy
from modelsafe.convert import convert
from modelsafe.errors import CheckpointNotFoundError, CorruptCheckpointError, ModelsafeError, StorageError
from modelsafe.legacy import read_foreign

from legacy_craft import G, assemble, call, get, npy_header, npz_deflate_bomb, put, tensor_expr, torch_zip, tup, zip_with_deflated

PY = sys.executable
MIB = 1 << 20


def _never_written_h5(path, datasets: int, mib: int = 64) -> None:
    import h5py

    with h5py.File(path, "w") as f:
        for i in range(datasets):
            f.create_dataset(f"layers/dense_{i}/vars/0", shape=(mib * MIB // 4,), dtype="f4")  # fill value, no storage


# -- item 1: compressed and unwritten inputs ------------------------------------------------------

def test_a_deflate_bomb_npz_is_refused_naming_the_member_and_the_numbers(tmp_path):
    path = tmp_path / "bomb.npz"
    npz_deflate_bomb(path, 256)
    assert path.stat().st_size < 400_000
    with pytest.raises(CorruptCheckpointError) as exc:
        convert(path, tmp_path / "out.safetensors")
    message = str(exc.value)
    assert "member w.npy" in message and f"{256 * MIB:,}" in message and f"{path.stat().st_size:,}" in message
    assert "max_expansion" in message and "--max-expansion" in message and exc.value.key == "member w.npy"
    assert "could not be read" not in message  # the budget's own error, not wrapped into another
    assert not (tmp_path / "out.safetensors").exists()


def test_max_expansion_lets_a_trusted_compressed_file_through(tmp_path, monkeypatch):
    monkeypatch.setattr(legacy, "EXPANSION_ALLOWANCE", 0)  # so a small file shows the rule
    path = tmp_path / "zeros.npz"
    np.savez_compressed(path, w=np.zeros(MIB, np.uint8))
    with pytest.raises(CorruptCheckpointError, match="refused before allocating"):
        convert(path, tmp_path / "a.safetensors")
    summary = convert(path, tmp_path / "b.safetensors", max_expansion=float("inf"))
    assert summary.tensor_bytes == MIB
    runner = CliRunner()
    from modelsafe.cli.app import cli as main

    refused = runner.invoke(main, ["convert", str(path), str(tmp_path / "c.safetensors")])
    assert refused.exit_code == 1 and "--max-expansion" in refused.output
    allowed = runner.invoke(main, ["convert", str(path), str(tmp_path / "c.safetensors"), "--max-expansion", "inf"])
    assert allowed.exit_code == 0, allowed.output
    with pytest.raises(ModelsafeError, match="max_expansion"):
        convert(path, tmp_path / "d.safetensors", max_expansion=-1)


def test_never_written_h5_datasets_are_charged_at_their_full_size(tmp_path):
    path = tmp_path / "fill.weights.h5"
    _never_written_h5(path, 3)  # 192 MiB declared, no storage at all
    assert path.stat().st_size < 64 * 1024
    with pytest.raises(CorruptCheckpointError, match="refused before allocating") as exc:
        convert(path, tmp_path / "out.safetensors")
    assert "dataset layers/dense_" in str(exc.value)


def test_a_keras_archive_is_charged_against_the_archive_not_the_inflated_member(tmp_path):
    path = tmp_path / "bomb.keras"
    zip_with_deflated(path, "model.weights.h5", b"", 200)  # 200 MiB member in a ~200 KB archive
    with pytest.raises(CorruptCheckpointError, match="model.weights.h5 brings"):
        read_foreign(path)


def test_real_files_convert_well_inside_the_limit(tmp_path):
    rng = np.random.default_rng(0)
    weights = {f"w{i}": rng.standard_normal((256, 256)).astype(np.float32) for i in range(4)}
    np.savez_compressed(tmp_path / "real.npz", **weights)
    summary = convert(tmp_path / "real.npz", tmp_path / "real.safetensors")
    back = ms.load(tmp_path / "real.safetensors")
    assert summary.tensors == 4 and all(np.array_equal(back[k], v) for k, v in weights.items())


_RLIMIT_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    import numpy as np, h5py
    from modelsafe.convert import convert
    from modelsafe.errors import ModelsafeError
    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize"))
    limit = vm + (256 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    try:
        np.ones(1 << 30, np.uint8)
        out = {"control": "allocated"}
    except MemoryError:
        out = {"control": "refused"}
    for src in sys.argv[1:]:
        try:
            convert(src, src + ".out.safetensors")
            out[src] = "converted"
        except ModelsafeError as exc:
            out[src] = type(exc).__name__
        except MemoryError:
            out[src] = "MemoryError"
    print(json.dumps(out))
    """
)


def test_bombs_are_refused_before_allocating_under_rlimit(tmp_path):
    """The issue's inputs at full size: a 1 MB npz inflating to 1 GiB, a tiny h5 declaring 1.6 GB unwritten."""
    npz = tmp_path / "bomb.npz"
    npz_deflate_bomb(npz, 1024)
    h5 = tmp_path / "fill.weights.h5"
    _never_written_h5(h5, 25)
    script = tmp_path / "limited.py"
    script.write_text(_RLIMIT_SCRIPT)
    proc = subprocess.run([PY, str(script), str(npz), str(h5)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out.pop("control") == "refused"
    assert out == {str(npz): "CorruptCheckpointError", str(h5): "CorruptCheckpointError"}


# -- item 2: shared storage stays shared ---------------------------------------------------------

def test_one_tensor_saved_400_times_is_stored_once(tmp_path):
    t = torch.arange(256 * 1024, dtype=torch.float32)  # 1 MiB
    src = tmp_path / "many.pt"
    torch.save([t] * 400, src)
    for to in ("modelsafe", "safetensors"):
        summary = convert(src, tmp_path / f"{to}.safetensors", to=to)
        assert summary.file_bytes < 2 * MIB and summary.tensor_bytes == MIB
    back = ms.load(tmp_path / "modelsafe.safetensors")
    assert len(back) == 400 and all(x is back[0] for x in back) and torch.equal(back[0], t)
    from safetensors import safe_open

    with safe_open(tmp_path / "safetensors.safetensors", "pt") as f:
        assert list(f.keys()) == ["0"] and f.metadata()["399"] == "0"  # safetensors.torch.save_model's convention


def test_identical_views_written_separately_in_the_pickle_become_one(tmp_path):
    """400 separate _rebuild_tensor_v2 calls over one storage (no pickle memo): one tensor, 399 aliases."""
    data, _ = assemble([tensor_expr("0", 256 * 1024) for _ in range(400)], 2)
    src = tmp_path / "views.pt"
    torch_zip(src, data, {"0": np.ones(256 * 1024, np.float32).tobytes()})
    for to in ("modelsafe", "safetensors"):
        assert convert(src, tmp_path / f"{to}.safetensors", to=to).file_bytes < 2 * MIB


def test_overlapping_views_beyond_the_limit_are_refused(tmp_path):
    t = torch.zeros(256 * 1024)
    src = tmp_path / "overlap.pt"
    torch.save([t[i * 1000:] for i in range(100)], src)  # 100 distinct views, 85 MB of one 1 MiB storage
    with pytest.raises(CorruptCheckpointError, match="view .* of storage 0") as exc:
        convert(src, tmp_path / "o.safetensors")
    assert str(src) in str(exc.value)
    few = tmp_path / "few.pt"
    torch.save({"a": t[:1000], "b": t[500:], "c": t.view(512, 512)}, few)  # ordinary views: fine
    back = ms.load(convert(few, tmp_path / "few.safetensors").destination)
    assert back["b"].shape == (256 * 1024 - 500,) and back["c"].shape == (512, 512)


def test_a_bytes_value_referenced_many_times_is_charged_per_reference(tmp_path):
    src = tmp_path / "blobs.pkl"
    src.write_bytes(pickle.dumps({"blobs": [b"\0" * MIB] * 400, "names": ["x" * MIB] * 400}, protocol=4))
    assert src.stat().st_size < 3 * MIB
    with pytest.raises(CorruptCheckpointError, match="strings and bytes"):
        convert(src, tmp_path / "o.safetensors")


def test_one_list_shared_a_thousand_times_is_charged_per_node(tmp_path):
    """16 KB of pickle, 2,000,000 nodes once expanded: each node costs the output (and the time to write it)."""
    src = tmp_path / "nodes.pkl"
    src.write_bytes(pickle.dumps([list(range(2000))] * 1000, protocol=4))
    assert src.stat().st_size < 16_000
    with pytest.raises(CorruptCheckpointError, match="object tree .2,001,001 nodes"):
        convert(src, tmp_path / "o.safetensors")


def test_numpy_arrays_built_from_one_memoized_buffer_are_charged(tmp_path):
    raw = b"\0" * MIB
    dtype = call(G("numpy", "dtype"), "u1", False, True)
    first = call(G("numpy.core.numeric", "_frombuffer"), put(1, raw), dtype, tup(MIB), "C")
    rest = [call(G("numpy.core.numeric", "_frombuffer"), get(1), dtype, tup(MIB), "C") for _ in range(200)]
    data, _ = assemble([first, *rest], 4)
    src = tmp_path / "arrays.pkl"
    src.write_bytes(data)
    assert src.stat().st_size < 2 * MIB
    with pytest.raises(CorruptCheckpointError, match="numpy array"):
        read_foreign(src)


# -- item 3: sharded indexes ----------------------------------------------------------------------

def _shards(folder, names=("a", "b")):
    from safetensors.numpy import save_file

    for n in names:
        save_file({n: np.ones(2, np.float32)}, folder / f"{n}.safetensors")


def test_an_index_naming_itself_or_another_index_is_refused(tmp_path):
    _shards(tmp_path)
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "a.safetensors", "x": index.name}}))
    with pytest.raises(CorruptCheckpointError, match="never an index") as exc:
        read_foreign(index)
    assert exc.value.key == "x"
    one, two = tmp_path / "one.index.json", tmp_path / "two.index.json"
    one.write_text(json.dumps({"weight_map": {"w": "two.index.json"}}))
    two.write_text(json.dumps({"weight_map": {"w": "one.index.json"}}))
    with pytest.raises(CorruptCheckpointError, match="never an index"):
        read_foreign(one)
    disguised = tmp_path / "three.safetensors"  # an index under a shard's name: sniffed, then refused
    disguised.write_text(json.dumps({"weight_map": {"w": "three.safetensors"}}))
    bad = tmp_path / "four.index.json"
    bad.write_text(json.dumps({"weight_map": {"w": "three.safetensors"}}))
    with pytest.raises(ModelsafeError):
        read_foreign(bad)


def test_the_cli_reports_a_self_naming_index_in_one_line(tmp_path):
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"x": index.name}}))
    proc = subprocess.run([PY, "-m", "modelsafe", "convert", str(index), str(tmp_path / "o.safetensors")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) < 10


def test_shards_must_be_regular_files_inside_the_folder(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    _shards(outside, ("secret",))
    folder = tmp_path / "model"
    folder.mkdir()
    _shards(folder, ("a",))
    os.symlink(outside / "secret.safetensors", folder / "link.safetensors")
    os.mkfifo(folder / "pipe.safetensors")
    (folder / "w.npz").write_bytes(b"")
    np.savez(folder / "w.npz", w=np.ones(2))
    cases = [("link.safetensors", CorruptCheckpointError, "leads out"),
             ("pipe.safetensors", StorageError, "not a regular file"),
             ("w.npz", CorruptCheckpointError, "shards are safetensors or torch"),
             ("nul\0.safetensors", CorruptCheckpointError, "not a file name"),
             ("gone.safetensors", CheckpointNotFoundError, "missing")]
    for shard, error, match in cases:
        index = folder / "model.safetensors.index.json"
        index.write_text(json.dumps({"weight_map": {"a": "a.safetensors", "x": shard}}))
        with pytest.raises(error, match=match):
            read_foreign(index)
    os.symlink(folder / "a.safetensors", folder / "alias.safetensors")  # a link inside the folder is fine
    index.write_text(json.dumps({"weight_map": {"a": "alias.safetensors"}}))
    assert list(read_foreign(index).tree) == ["a"]


def test_a_pipe_or_device_as_source_is_refused_without_hanging(tmp_path):
    fifo = tmp_path / "in.pt"
    os.mkfifo(fifo)
    code = ("import sys\nfrom modelsafe.convert import convert\nfrom modelsafe.errors import StorageError\n"
            "for src in sys.argv[1:]:\n    try:\n        convert(src, src + '.out')\n    except StorageError as e:\n"
            "        print('refused', e)\n")
    proc = subprocess.run([PY, "-c", code, str(fifo), "/dev/zero"], capture_output=True, text=True, timeout=60)
    assert proc.stdout.count("refused") == 2 and "not a regular file" in proc.stdout, proc.stderr[-2000:]


# -- item 4: fields validated before arithmetic ---------------------------------------------------

_FLOATS = np.arange(4, dtype=np.float32).tobytes()


@pytest.mark.parametrize("framework", ["torch", "numpy"])
@pytest.mark.parametrize(
    "shape, stride, offset",
    [
        ((1,), (2**70,), 0),            # a stride no int64 holds
        ((1, 2), (2**62, 1), 0),        # a stride whose byte count overflows
        ((0, 2**62), (1, 1), 0),        # empty, yet no array has that shape
        ((0, 2**40, 2**40), (1, 1, 1), 0),
        ((0,), (1,), 2**70),            # an offset far past the storage
        ((2,), (1,), 10**40),
    ],
)
def test_overflowing_shapes_strides_and_offsets_are_corrupt(tmp_path, framework, shape, stride, offset):
    data, _ = assemble({"w": tensor_expr("0", 4, shape=shape, stride=stride, offset=offset)}, 2)
    src = tmp_path / "overflow.pt"
    torch_zip(src, data, {"0": _FLOATS})
    with pytest.raises(CorruptCheckpointError) as exc:
        read_foreign(src, framework=framework)
    assert str(src) in str(exc.value)


def _mxnet(path, shape, code=0, data=b""):
    blob = struct.pack("<QQQ", 0x112, 0, 1) + struct.pack("<Iii", 0xF993FACA, 0, len(shape))
    blob += struct.pack(f"<{len(shape)}q", *shape) + struct.pack("<iii", 1, 0, code) + data + struct.pack("<QQ", 1, 1) + b"w"
    path.write_bytes(blob)


@pytest.mark.parametrize("shape", [(0, 2**62), (0, 2**31, 2**31, 2**31), (0, 2**63 - 1), (-2, 3)])
def test_mxnet_shapes_no_array_can_have_are_corrupt(tmp_path, shape):
    path = tmp_path / "m.params"
    _mxnet(path, shape)
    with pytest.raises(CorruptCheckpointError, match="array 0") as exc:
        read_foreign(path)
    assert exc.value.key == "array 0"


@pytest.mark.parametrize("shape", [(0, 2**62), (0, 2**40, 2**40)])
def test_npy_headers_with_impossible_shapes_are_corrupt(tmp_path, shape):
    import zipfile

    path = tmp_path / "w.npz"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("w.npy", npy_header(shape, "<f4"))
    with pytest.raises(CorruptCheckpointError, match="member w.npy"):
        read_foreign(path)


def test_an_npz_that_is_also_a_npy_file_is_read_as_its_members(tmp_path):
    """np.load would take a file starting with the .npy magic whole, whatever its zip directory says."""
    import zipfile

    path = tmp_path / "both.npz"
    head = npy_header((1 << 40,), "|u1")  # a 1 TiB .npy header in front of a valid archive
    with zipfile.ZipFile(tmp_path / "inner.zip", "w") as z:
        z.writestr("w.npy", npy_header((2,), "<f4") + np.ones(2, np.float32).tobytes())
    path.write_bytes(head + (tmp_path / "inner.zip").read_bytes())
    tree = read_foreign(path).tree
    assert list(tree) == ["w"] and np.array_equal(tree["w"], np.ones(2, np.float32))


# -- item 5: h5 reaching outside the file or looping -----------------------------------------------

def test_h5_hard_link_cycles_end_and_shared_datasets_are_read_once(tmp_path):
    import h5py

    path = tmp_path / "loop.weights.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("layers")
        g["self"] = g  # a group that contains itself
        g.create_dataset("w", data=np.ones(3, np.float32))
        f["again"] = g["w"]
    code = f"from modelsafe.legacy import read_foreign\nt = read_foreign({str(path)!r}).tree\nprint(sorted(t), t['again'] is t['layers/w'])"
    proc = subprocess.run([PY, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "['again', 'layers/w'] True", proc.stderr[-2000:]


def test_h5_plugin_filters_are_refused(tmp_path):
    import h5py

    path = tmp_path / "plugin.weights.h5"
    with h5py.File(path, "w") as f:
        space = h5py.h5s.create_simple((4,))
        plist = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        plist.set_chunk((4,))
        plist.set_filter(32001, h5py.h5z.FLAG_OPTIONAL)  # blosc: HDF5 would look for a plugin library
        h5py.h5d.create(f.id, b"w", h5py.h5t.NATIVE_FLOAT, space, plist)
    with pytest.raises(ms.UnsupportedObjectError, match="filter 32001"):
        read_foreign(path)


@pytest.mark.parametrize("framework", ["torch", "numpy"])
@pytest.mark.parametrize(
    "expr, match",
    [
        (call(G("torch", "device"), "cuda", 10**40), "small index"),
        (call(G("torch", "device"), "cuda", -5), "small index"),
        (call(G("torch", "device"), "cuda:0; rm -rf /"), "not a device name"),
        (call(G("numpy.core.numeric", "_frombuffer"), b"", call(G("numpy", "dtype"), "f4", False, True), tup(0, 2**62), "C"),
         "larger than any array"),
    ],
)
def test_pickled_devices_and_numpy_shapes_are_validated_where_they_are_built(tmp_path, framework, expr, match):
    data, _ = assemble({"v": expr}, 2)
    src = tmp_path / "fields.pt"
    torch_zip(src, data, {})
    with pytest.raises(CorruptCheckpointError, match=match):
        read_foreign(src, framework=framework)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_a_dataset_linked_under_many_names_is_stored_once(tmp_path, framework):
    import h5py

    path = tmp_path / "links.weights.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("w", data=np.ones(MIB // 4, np.float32))
        for i in range(300):
            f[f"alias{i}"] = f["w"]
    summary = convert(path, tmp_path / "o.safetensors", framework=framework)
    assert summary.file_bytes < 2 * MIB
    back = ms.load(tmp_path / "o.safetensors")
    assert len(back) == 301 and all(v is back["w"] for v in back.values())


def test_h5_names_with_unicode_digits_sort_naturally(tmp_path):
    import h5py

    path = tmp_path / "names.weights.h5"
    with h5py.File(path, "w") as f:
        for name in ("vars/10", "vars/2", "²", "x٣"):
            f.create_dataset(name, data=np.ones(1, np.float32))
    assert list(read_foreign(path).tree) == ["x٣", "²", "vars/2", "vars/10"]  # a group after its datasets
