"""ms.save / ms.load / ms.open as the public API: lazy reads, keys, metadata, imports."""

from __future__ import annotations

import json
import mmap
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import modelsafe as ms

from craft import read_parts


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.safetensors"
    obj = {
        "encoder": {"weight": torch.arange(6.0).reshape(2, 3), "bias": torch.zeros(2)},
        "head": np.arange(4, dtype=np.int32),
        "steps": [1, 2],
        "blob": b"raw",
        "scale": torch.tensor(0.5),
    }
    ms.save(obj, path, metadata={"epoch": 5, "name": "run"})
    return path, obj


def corrupt_tensor_bytes(path, name: str) -> None:
    header, data = read_parts(path)
    begin, _ = header[name]["data_offsets"]
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) - len(data) + begin)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x10]))


def test_open_lists_keys_in_tree_order(saved):
    path, _ = saved
    with ms.open(path) as reader:
        assert reader.keys() == ["encoder.weight", "encoder.bias", "head", "scale"]
        assert list(reader) == reader.keys()
        assert len(reader) == 4
        assert "head" in reader and "encoder.bias" in reader
        assert "steps" not in reader and "nope" not in reader and "blob" not in reader
        assert str(path) in repr(reader)


def test_open_reads_single_tensors(saved):
    path, obj = saved
    with ms.open(path) as reader:
        assert torch.equal(reader["encoder.weight"], obj["encoder"]["weight"])
        head = reader["head"]
        assert isinstance(head, np.ndarray) and head.tolist() == [0, 1, 2, 3]
        assert reader["scale"].dim() == 0 and reader["scale"].item() == 0.5
        as_numpy = reader.get("encoder.weight", framework="numpy")
        assert isinstance(as_numpy, np.ndarray) and as_numpy.tolist() == [[0, 1, 2], [3, 4, 5]]


def test_open_exposes_metadata_and_manifest(saved):
    path, _ = saved
    with ms.open(path) as reader:
        assert reader.metadata == {"epoch": 5, "name": "run"}
        manifest = reader.manifest
        assert manifest["format_version"][0] == 1
        assert set(manifest["tensors"]) >= {"encoder.weight", "head", "blob"}
        assert all(len(entry["xxh3"]) == 16 for entry in manifest["tensors"].values())
        json.dumps(manifest)  # plain JSON


def test_open_whole_tree_load(saved):
    path, obj = saved
    with ms.open(path) as reader:
        back = reader.load()
    assert back["steps"] == [1, 2] and back["blob"] == b"raw"
    assert torch.equal(back["encoder"]["bias"], obj["encoder"]["bias"])


def test_missing_key_error_names_file_and_key(saved):
    path, _ = saved
    with ms.open(path) as reader:
        with pytest.raises(ms.TensorKeyError) as info:  # a ModelsafeError, and a KeyError as for any mapping
            reader["encoder.wieght"]
    assert isinstance(info.value, KeyError) and info.value.key == "encoder.wieght"
    message = str(info.value)
    assert "encoder.wieght" in message and str(path) in message and ".keys()" in message


def test_reading_one_tensor_does_not_read_the_others(saved):
    """Corrupt one tensor's bytes: the others still read, the bad one raises naming itself."""
    path, obj = saved
    corrupt_tensor_bytes(path, "encoder.bias")
    with ms.open(path) as reader:
        assert torch.equal(reader["encoder.weight"], obj["encoder"]["weight"])
        assert reader["head"].tolist() == [0, 1, 2, 3]
        with pytest.raises(ms.CorruptCheckpointError) as info:
            reader["encoder.bias"]
    assert info.value.key == "encoder.bias" and info.value.path == str(path)
    assert "'encoder.bias'" in str(info.value) and str(path) in str(info.value)
    with pytest.raises(ms.CorruptCheckpointError, match="encoder.bias"):
        ms.load(path)
    # without verification the damaged bytes are returned as they are
    assert ms.load(path, verify=False)["encoder"]["bias"].shape == (2,)


def test_open_maps_lazily(tmp_path):
    """ms.open + one tensor of a file far bigger than what the process reads stays cheap."""
    path = tmp_path / "big.safetensors"
    ms.save({"big": np.zeros(64 << 20, np.uint8), "small": np.arange(3)}, path)
    reader = ms.open(path, verify=False)
    small = reader["small"]
    assert small.tolist() == [0, 1, 2]
    big = reader["big"]
    base = big
    while getattr(base, "base", None) is not None:
        base = base.base
    owner = base.obj if isinstance(base, memoryview) else base
    assert isinstance(owner, mmap.mmap), "ms.open tensors should view the mapped file, not a copy"
    reader.close()


def test_opened_tensors_do_not_write_through_to_the_file(saved):
    path, _ = saved
    before = path.read_bytes()
    with ms.open(path) as reader:
        head = reader["head"]
        if head.flags.writeable:
            head[:] = 99
    assert path.read_bytes() == before


def test_save_overwrites_atomically_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.safetensors"
    ms.save({"v": 1}, path)
    ms.save({"v": 2}, str(path))
    assert ms.load(path) == {"v": 2}
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors"]


def test_path_types(tmp_path):
    ms.save([1], os.fspath(tmp_path / "s.safetensors"))
    assert ms.load(tmp_path / "s.safetensors") == [1]
    assert ms.load(str(tmp_path / "s.safetensors")) == [1]


def test_loading_a_directory_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(ms.CheckpointNotFoundError, match="not a modelsafe checkpoint"):
        ms.load(tmp_path)


def test_saving_to_a_directory_path_is_a_storage_error(tmp_path):
    with pytest.raises(ms.StorageError, match="is a directory") as info:
        ms.save({"a": 1}, tmp_path)
    assert info.value.path == str(tmp_path)


def test_saving_into_a_missing_directory(tmp_path):
    target = tmp_path / "missing" / "x.safetensors"
    with pytest.raises(ms.StorageError) as info:
        ms.save({"a": 1}, target)
    assert info.value.path == str(target) and "does not exist" in str(info.value)


def test_public_names():
    for name in ("save", "load", "open", "register", "ModelsafeError", "CorruptCheckpointError",
                 "CheckpointNotFoundError", "UnsupportedObjectError", "UnsafeObjectError", "UnknownClassError",
                 "IncompatibleStateError", "NewerFormatError", "StorageError", "FrameworkNotInstalledError"):
        assert hasattr(ms, name), name
    assert isinstance(ms.__version__, str)


# -- no framework is imported unless it is needed -----------------------------------------

FRAMEWORKS = ("torch", "tensorflow", "jax", "keras", "mxnet", "flax")


def run_python(code: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_modelsafe_imports_no_framework():
    loaded = run_python(
        f"""
        import json, sys
        import modelsafe
        print(json.dumps([m for m in {FRAMEWORKS!r} if m in sys.modules]))
        """
    )
    assert loaded == []


def test_numpy_save_load_open_never_import_torch(tmp_path):
    path = tmp_path / "np.safetensors"
    loaded = run_python(
        f"""
        import json, sys
        import numpy as np
        import modelsafe as ms
        ms.save({{"a": np.ones(3), "b": [np.int8(3), (1, 2)], "c": b"x"}}, {str(path)!r}, metadata={{"k": 1}})
        back = ms.load({str(path)!r})
        with ms.open({str(path)!r}) as r:
            r["a"]; r.metadata
        assert back["b"][1] == (1, 2)
        print(json.dumps([m for m in {FRAMEWORKS!r} if m in sys.modules]))
        """
    )
    assert loaded == []


def test_the_probe_would_see_torch_if_it_were_imported():
    """The check above can fail: saving a torch tensor does import torch."""
    loaded = run_python(
        """
        import json, sys, tempfile, os
        import modelsafe as ms
        import torch
        ms.save(torch.ones(1), os.path.join(tempfile.mkdtemp(), "t.safetensors"))
        print(json.dumps(["torch"] if "torch" in sys.modules else []))
        """
    )
    assert loaded == ["torch"]


def test_tensors_outlive_their_reader(saved):
    path, obj = saved
    with ms.open(path) as reader:
        weight = reader["encoder.weight"]
        head = reader["head"]
    # the reader is closed; what it returned still holds valid memory
    assert weight.tolist() == obj["encoder"]["weight"].tolist()
    assert head.sum() == 6


def test_reader_sees_a_consistent_file_while_it_is_replaced(tmp_path):
    path = tmp_path / "live.safetensors"
    ms.save({"a": np.full(1000, 1.0), "b": np.full(1000, 2.0)}, path)
    with ms.open(path) as reader:
        a = reader["a"]
        ms.save({"a": np.full(1000, 10.0), "b": np.full(1000, 20.0)}, path)  # atomic replace under the reader
        assert a[0] == 1.0 and reader["b"][0] == 2.0  # still the file that was opened
    assert ms.load(path)["b"][0] == 20.0


def test_reading_after_close_is_an_error_not_a_crash(saved):
    path, _ = saved
    reader = ms.open(path)
    reader.close()
    with pytest.raises(ms.ModelsafeError, match="closed") as info:
        reader["head"]
    assert info.value.path == str(path)


def test_loaded_tensors_own_their_storage(tmp_path):
    """APIs that read a storage from its start, and torch.save of one tensor, see only that tensor."""
    import io

    import torch

    path = tmp_path / "state.safetensors"
    ms.save({"big": torch.randn(256, 256), "rng": torch.get_rng_state(), "w": torch.randn(7)}, path)
    for loaded in (ms.load(path), ms.load(path, verify=False)):
        torch.set_rng_state(loaded["rng"])  # raised "Invalid mt19937 state" on shared storages
        assert torch.equal(torch.get_rng_state(), loaded["rng"])
        buf = io.BytesIO()
        torch.save(loaded["w"], buf)
        assert len(buf.getvalue()) < 4096  # not the 256 KiB of the whole file
        assert all(t.storage_offset() == 0 for t in loaded.values())


def test_payloads_sized_in_multiples_of_64_bytes_load_64_byte_aligned(tmp_path):
    import torch

    state = {"step": torch.tensor(3.0), "odd": torch.randn(5), "w": torch.randn(16, 16), "b": torch.randn(16)}
    path = tmp_path / "aligned.safetensors"
    ms.save(state, path)
    loaded = ms.load(path)
    assert loaded["w"].data_ptr() % 64 == 0 and loaded["b"].data_ptr() % 64 == 0
    with ms.open(path) as reader:
        assert reader["w"].data_ptr() % 64 == 0


def test_mmap_false_loads_survive_in_place_rewrites(tmp_path):
    """A foreign writer truncating and rewriting the file in place leaves mmap=False loads intact."""
    import numpy as np

    path = tmp_path / "state.safetensors"
    ms.save({"w": np.arange(4096, dtype=np.float32)}, path)
    for target in (path, _checkpoint_dir(tmp_path)):
        loaded = ms.load(target, mmap=False)
        for shard in [target] if target == path else sorted(target.glob("*.safetensors")):
            with open(shard, "r+b") as f:  # what torch.save or `cp` over the file does
                f.truncate(0)
                f.write(b"\0" * 64)
        assert np.array_equal(loaded["w"], np.arange(4096, dtype=np.float32))


def _checkpoint_dir(tmp_path):
    import pathlib

    import numpy as np

    run = ms.Checkpoints(tmp_path / "run")
    info = run.save({"w": np.arange(4096, dtype=np.float32)}, step=1)
    return pathlib.Path(info.path)


def test_small_edges_of_names_and_errors(tmp_path):
    """An empty state_dict key stays a tensor name; adapter errors name the file; bytes are not tensors."""
    import torch
    from safetensors import safe_open

    path = tmp_path / "edges.safetensors"
    ms.save({"": torch.ones(2), "c": torch.zeros(2, dtype=torch.complex32), "b": b"xy"}, path)
    with safe_open(path, "pt") as f:
        assert "" in f.keys()
    with pytest.raises(ms.UnsupportedObjectError) as info:
        ms.load(path, framework="numpy")  # numpy has no complex32
    assert info.value.path == str(path) and str(path) in str(info.value)
    with ms.open(path) as reader, pytest.raises(ms.TensorKeyError, match="bytes payload"):
        reader["b"]


@pytest.mark.parametrize("call", ["save", "load", "open", "Checkpoints"])
def test_urls_of_unknown_protocols_get_a_clear_error_and_file_urls_work(call, tmp_path):
    import numpy as np

    url = "nosuchprotocol://bucket/runs/x.safetensors"
    with pytest.raises(ms.StorageError, match="fsspec does not know this URL") as info:
        if call == "save":
            ms.save({"a": np.ones(2)}, url)
        elif call == "Checkpoints":
            ms.Checkpoints(url)
        else:
            getattr(ms, call)(url)
    assert info.value.path == url
    target = f"file://{tmp_path}/x.safetensors"
    ms.save({"a": np.ones(2)}, target)
    assert np.array_equal(ms.load(target)["a"], np.ones(2))
