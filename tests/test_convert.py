"""``convert()`` and ``modelsafe convert``: torch files in, modelsafe / plain safetensors out.

The oracle for torch files is ``torch.load(weights_only=True)`` of the same file (tests
only).  Each conversion is checked by loading the result with ``ms.load`` (and, for
plain safetensors, with the safetensors package itself).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import modelsafe as ms
from modelsafe.convert import ConvertSummary, convert
from modelsafe.errors import CorruptCheckpointError, StorageError
from test_legacy_torch_pickle import CASES, saved, tensors_of

PY = sys.executable


def assert_equal_values(ours, oracle, where="obj"):
    """Same types, dtypes, shapes, requires_grad and bits; layout (strides) may differ after conversion."""
    assert type(ours) is type(oracle), f"{where}: {type(ours)} != {type(oracle)}"
    if isinstance(oracle, torch.Tensor):
        assert ours.dtype == oracle.dtype and ours.shape == oracle.shape and ours.requires_grad == oracle.requires_grad, where
        a, b = ours.detach().contiguous().reshape(-1), oracle.detach().contiguous().reshape(-1)
        assert torch.equal(a.view(torch.uint8) if a.numel() else a, b.view(torch.uint8) if b.numel() else b), where
    elif isinstance(oracle, dict):
        assert list(ours) == list(oracle), where
        for k in oracle:
            assert_equal_values(ours[k], oracle[k], f"{where}[{k!r}]")
    elif isinstance(oracle, (list, tuple)):
        assert len(ours) == len(oracle), where
        for i, (a, b) in enumerate(zip(ours, oracle)):
            assert_equal_values(a, b, f"{where}[{i}]")
    else:
        assert ours == oracle, where


@pytest.mark.parametrize("layout", ["zip", "legacy", "zip-p4"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_converted_file_loads_equal_to_torch_load(tmp_path, case, layout):
    path, oracle = saved(tmp_path, case, layout)
    dst = tmp_path / "out.safetensors"
    summary = convert(path, dst)
    assert isinstance(summary, ConvertSummary) and summary.source_format == "torch" and summary.target == "modelsafe"
    back = ms.load(dst)
    assert_equal_values(back, oracle)
    assert summary.tensors == len({id(t) for t in tensors_of(back)})
    assert summary.file_bytes == os.path.getsize(dst)


def test_tied_weights_come_back_tied(tmp_path):
    path, _ = saved(tmp_path, "tied", "zip")
    convert(path, tmp_path / "tied.safetensors")
    back = ms.load(tmp_path / "tied.safetensors")
    assert back["embed.weight"] is back["out.weight"]
    with ms.open(tmp_path / "tied.safetensors") as reader:
        assert len(reader.records) == 1  # stored once


def test_views_come_back_equal(tmp_path):
    """Views of one storage are stored as separate tensors (the format has no view records); values match."""
    path, oracle = saved(tmp_path, "views", "legacy")
    convert(path, tmp_path / "views.safetensors")
    assert_equal_values(ms.load(tmp_path / "views.safetensors"), oracle)


def test_checkpoint_provenance_and_optimizer_state(tmp_path):
    path, oracle = saved(tmp_path, "checkpoint", "zip")
    convert(path, tmp_path / "ck.safetensors", metadata={"note": "imported"})
    with ms.open(tmp_path / "ck.safetensors") as reader:
        assert reader.metadata == {"converted_from": path.name, "source_format": "torch", "note": "imported"}
    back = ms.load(tmp_path / "ck.safetensors")
    model = __import__("test_legacy_torch_pickle").Net()
    model.load_state_dict(back["model"])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt.load_state_dict(back["optimizer"])
    assert_equal_values(opt.state_dict()["state"], oracle["optimizer"]["state"])
    assert back["epoch"] == 7 and back["loss"] == 0.4210


def test_values_modelsafe_cannot_store_are_lowered_with_notes(tmp_path):
    """Each value either round-trips as itself (ms.save learned its type) or is lowered, with a note."""
    values = {"size": torch.Size([2, 3]), "dtype": torch.float16, "device": torch.device("cpu"), "slice": slice(1, 4),
              "c": 2 - 1j}
    lowered = {"size": (2, 3), "dtype": "torch.float16", "device": "cpu", "slice": {"slice": [1, 4, None]},
               "c": {"complex": [2.0, -1.0]}}
    src = tmp_path / "misc.pt"
    torch.save({**values, "w": torch.ones(2)}, src)
    summary = convert(src, tmp_path / "misc.safetensors")
    back = ms.load(tmp_path / "misc.safetensors")
    for key, value in values.items():
        noted = any(n.startswith(f'obj["{key}"]:') for n in summary.notes)
        if noted:
            assert back[key] == lowered[key], key
        else:
            assert back[key] == value and type(back[key]) is type(value), key
    assert any(n.startswith('obj["slice"]') for n in summary.notes)  # builtins.slice has no modelsafe encoding


def test_numpy_values_in_a_checkpoint_survive_conversion(tmp_path):
    from test_legacy_torch_pickle import NUMPY_VALUES

    src = tmp_path / "np.pt"
    torch.save({"model": {"w": torch.ones(2)}, "metrics": NUMPY_VALUES}, src)
    convert(src, tmp_path / "np.safetensors")
    back = ms.load(tmp_path / "np.safetensors")["metrics"]
    for k, v in NUMPY_VALUES.items():
        assert type(back[k]) is type(v) and back[k].dtype == v.dtype.newbyteorder("=") and np.array_equal(back[k], v), k


def test_numpy_framework(tmp_path):
    path, oracle = saved(tmp_path, "state_dict", "zip")
    convert(path, tmp_path / "np.safetensors", framework="numpy")
    back = ms.load(tmp_path / "np.safetensors")
    assert all(isinstance(v, np.ndarray) for v in back.values())
    for k, v in oracle.items():
        assert np.array_equal(back[k], v.numpy())


def test_plain_safetensors_output_is_readable_by_safetensors(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file

    path, oracle = saved(tmp_path, "checkpoint", "zip")
    dst = tmp_path / "plain.safetensors"
    summary = convert(path, dst, to="safetensors")
    tensors = load_file(dst)
    for k, v in oracle["model"].items():
        assert torch.equal(tensors[f"model.{k}"], v)
    assert torch.equal(tensors["optimizer.state.0.exp_avg"], oracle["optimizer"]["state"][0]["exp_avg"])
    with safe_open(dst, "pt") as f:
        assert "modelsafe" not in (f.metadata() or {}) and (f.metadata() or {}).get("format") == "pt"
    assert any("left out" in n for n in summary.notes)
    assert "epoch" in summary.left_out and "optimizer.param_groups.0.lr" in summary.left_out
    assert summary.tensors == len(tensors)


def test_plain_safetensors_stores_tied_tensors_once_as_save_model_does(tmp_path):
    """Plain safetensors cannot share storage: one name keeps the bytes, the metadata maps the other to it."""
    from safetensors import safe_open
    from safetensors.torch import load_model

    from test_legacy_torch_pickle import Tied

    path, oracle = saved(tmp_path, "tied", "zip")
    summary = convert(path, tmp_path / "plain.safetensors", to="safetensors")
    with safe_open(tmp_path / "plain.safetensors", "pt") as f:
        assert sorted(f.keys()) == ["embed.weight"] and f.metadata()["out.weight"] == "embed.weight"
    assert "out.weight" in summary.left_out and any("tied" in n for n in summary.notes)
    model = Tied()
    load_model(model, tmp_path / "plain.safetensors")  # safetensors' own loader re-ties them
    assert torch.equal(model.out.weight, oracle["out.weight"]) and model.out.weight is model.embed.weight


def test_plain_safetensors_names_never_collide(tmp_path):
    from safetensors.torch import load_file

    src = tmp_path / "clash.pt"
    torch.save({"a.b": torch.zeros(1), "a": {"b": torch.ones(1)}}, src)
    summary = convert(src, tmp_path / "clash.safetensors", to="safetensors")
    tensors = load_file(tmp_path / "clash.safetensors")
    assert sorted(tensors) == ["a.b", "a.b#2"] and any("a.b#2" in n for n in summary.notes)


def test_existing_destination_needs_overwrite(tmp_path):
    path, _ = saved(tmp_path, "tensor", "zip")
    dst = tmp_path / "t.safetensors"
    dst.write_bytes(b"keep")
    with pytest.raises(StorageError, match="already exists"):
        convert(path, dst)
    assert dst.read_bytes() == b"keep"
    convert(path, dst, overwrite=True)
    assert torch.equal(ms.load(dst), torch.load(path, weights_only=True))
    with pytest.raises(StorageError, match="is the source"):
        convert(dst, dst, overwrite=True)
    with pytest.raises(StorageError, match="does not exist"):
        convert(path, tmp_path / "no" / "such" / "dir.safetensors")


def test_unknown_formats_and_missing_files(tmp_path):
    junk = tmp_path / "junk.dat"
    junk.write_bytes(b"hello world, not a model")
    with pytest.raises(CorruptCheckpointError, match="not a format modelsafe can convert"):
        convert(junk, tmp_path / "o.safetensors")
    with pytest.raises(ms.CheckpointNotFoundError):
        convert(tmp_path / "missing.pt", tmp_path / "o.safetensors")
    with pytest.raises(ValueError, match="choose one of"):
        convert(junk, tmp_path / "o.safetensors", to="onnx")


def test_format_is_sniffed_not_guessed_from_the_extension(tmp_path):
    path, oracle = saved(tmp_path, "state_dict", "zip")
    disguised = tmp_path / "weights.safetensors"  # a torch zip named like safetensors
    os.rename(path, disguised)
    assert convert(disguised, tmp_path / "o.safetensors").source_format == "torch"
    legacy, _ = saved(tmp_path, "state_dict", "legacy")
    odd = tmp_path / "weights.data"
    os.rename(legacy, odd)
    assert convert(odd, tmp_path / "o2.safetensors").source_format == "torch"


# -- the command line --------------------------------------------------------------------------

def _cli():
    from modelsafe.cli.app import cli

    return cli


def test_cli_in_process_human_and_json(tmp_path):
    path, oracle = saved(tmp_path, "checkpoint", "legacy")
    runner = CliRunner()
    result = runner.invoke(_cli(), ["convert", str(path), str(tmp_path / "a.safetensors")])
    assert result.exit_code == 0, result.output
    assert "converted" in result.output and "torch" in result.output
    assert_equal_values(ms.load(tmp_path / "a.safetensors"), oracle)
    result = runner.invoke(_cli(), ["convert", str(path), str(tmp_path / "b.safetensors"), "--json", "--to", "safetensors"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["source_format"] == "torch" and doc["target"] == "safetensors" and doc["tensors"] > 10
    result = runner.invoke(_cli(), ["convert", str(path), str(tmp_path / "b.safetensors")])
    assert result.exit_code == 1 and "already exists" in result.output
    result = runner.invoke(_cli(), ["convert", str(path), str(tmp_path / "b.safetensors"), "--force"])
    assert result.exit_code == 0
    result = runner.invoke(_cli(), ["convert", str(path), str(tmp_path / "c.safetensors"), "--to", "onnx"])
    assert result.exit_code == 2


def test_cli_as_a_subprocess(tmp_path):
    path, oracle = saved(tmp_path, "checkpoint", "zip")
    dst = tmp_path / "sub.safetensors"
    proc = subprocess.run([PY, "-m", "modelsafe", "convert", str(path), str(dst), "--json"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["destination"] == str(dst)
    assert_equal_values(ms.load(dst), oracle)
    proc = subprocess.run([PY, "-m", "modelsafe", "convert", str(tmp_path / "nope.pt"), str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "nope.pt" in proc.stderr
    proc = subprocess.run([PY, "-m", "modelsafe", "convert", str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    folder = tmp_path / "model"
    folder.mkdir()
    os.replace(path, folder / "pytorch_model.bin")
    proc = subprocess.run([PY, "-m", "modelsafe", "convert", str(folder), str(tmp_path / "from-folder.safetensors")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert_equal_values(ms.load(tmp_path / "from-folder.safetensors"), oracle)


def test_torch_files_convert_without_torch_installed(tmp_path):
    """With torch unimportable, a torch checkpoint still converts (to numpy arrays), running no code."""
    path, oracle = saved(tmp_path, "checkpoint", "legacy")
    dst = tmp_path / "np.safetensors"
    script = (
        "import sys; sys.modules['torch'] = None\n"
        "from modelsafe.convert import convert\n"
        f"s = convert({str(path)!r}, {str(dst)!r})\n"
        "assert 'torch' not in sys.modules or sys.modules['torch'] is None\n"
        "print(s.tensors)\n"
    )
    proc = subprocess.run([PY, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    back = ms.load(dst, framework="numpy")
    for k, v in oracle["model"].items():
        assert isinstance(back["model"][k], np.ndarray) and np.array_equal(back["model"][k], v.numpy()), k
    assert back["epoch"] == 7


def test_a_checkpoint_lightning_itself_wrote(tmp_path):
    """tests/golden/lightning.ckpt (Lightning 2: state_dict, loops, callbacks, optimizer_states, lr_schedulers)."""
    src = os.path.join(os.path.dirname(__file__), "golden", "lightning.ckpt")
    oracle = torch.load(src, weights_only=True)
    summary = convert(src, tmp_path / "lightning.safetensors")
    assert summary.source_format == "torch"
    back = ms.load(tmp_path / "lightning.safetensors")
    assert_equal_values(back, oracle)
    assert back["hyper_parameters"] == {"lr": 0.1, "hidden": 4} and set(back) >= {"loops", "optimizer_states", "lr_schedulers"}
