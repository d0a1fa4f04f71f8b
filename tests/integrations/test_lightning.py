"""modelsafe.integrations.lightning: ModelCheckpoint files are modelsafe files; fit resumes from them exactly."""

from __future__ import annotations

import argparse
import enum
import os
import pathlib
import pickle
import subprocess
import sys

import pytest

L = pytest.importorskip("lightning")
torch = pytest.importorskip("torch")

from lightning.fabric.utilities.data import AttributeDict  # noqa: E402

import modelsafe as ms  # noqa: E402
from modelsafe.integrations.lightning import RNG_KEY, ModelsafeCheckpointIO, lower_checkpoint  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
SCRIPT = HERE / "lightning_fit.py"
sys.path.insert(0, str(HERE))
import lightning_fit  # noqa: E402


def fit(directory, epochs, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(directory), str(epochs), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    return out


def no_pickle(monkeypatch) -> None:
    def refused(*a, **k):
        raise AssertionError("pickle was used")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refused)
    monkeypatch.setattr(torch, "load", refused)


def test_resume_in_a_new_process_equals_an_uninterrupted_fit(tmp_path, monkeypatch):
    two, three = fit(tmp_path / "two", 2), fit(tmp_path / "three", 3)  # side by side
    finished(two), finished(three)
    out = finished(fit(tmp_path / "two", 3, "--resume", str(tmp_path / "two/ckpt/last.ckpt"), "--no-pickle"))
    assert "Restored all states" in out
    resumed, straight = ms.load(tmp_path / "two/final.safetensors"), ms.load(tmp_path / "three/final.safetensors")
    assert resumed["step"] == straight["step"] == 18
    for key, value in straight["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    for index, state in straight["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(resumed["optimizer"]["state"][index][name], value), (index, name)
    assert resumed["scheduler"] == straight["scheduler"]

    # save_top_k=2 plus last: the worst epoch's file was removed through the plugin
    assert sorted(os.listdir(tmp_path / "three/ckpt")) == ["epoch=1-step=12.ckpt", "epoch=2-step=18.ckpt", "last.ckpt"]
    no_pickle(monkeypatch)
    ckpt = ms.load(tmp_path / "three/ckpt/last.ckpt")
    assert ckpt["global_step"] == 18 and ckpt["hyper_parameters"] == {"width": 8, "lr": 0.05}
    assert set(ckpt["state_dict"]) == set(straight["model"])
    assert RNG_KEY in ckpt
    with ms.open(tmp_path / "three/ckpt/last.ckpt") as reader:  # a plain safetensors file too
        assert "state_dict.net.0.weight" in reader.keys()


def _trainer(tmp_path, plugin, epochs=2) -> L.Trainer:
    return L.Trainer(max_epochs=epochs, plugins=[plugin] if plugin else None, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu")


def test_async_save_writes_the_same_checkpoints(tmp_path):
    states = []
    for name, plugin in (("sync", ModelsafeCheckpointIO()), ("async", ModelsafeCheckpointIO(async_save=True))):
        L.seed_everything(0, verbose=False)
        model = lightning_fit.Regressor()
        trainer = _trainer(tmp_path / name, plugin)
        trainer.fit(model, lightning_fit.data())
        path = trainer.checkpoint_callback.best_model_path
        assert path.endswith(".ckpt") and os.path.isfile(path)
        states.append(ms.load(path))
    sync, background = states
    assert sync["global_step"] == background["global_step"] == 12
    for key, value in sync["state_dict"].items():
        assert torch.equal(background["state_dict"][key], value)


def test_a_failed_background_save_is_raised_not_swallowed(tmp_path):
    io = ModelsafeCheckpointIO(async_save=True)
    io.save_checkpoint({"state_dict": {"w": torch.ones(2)}, "bad": object()}, tmp_path / "a.ckpt")
    with pytest.raises(ms.UnsupportedObjectError, match="bad"):
        io.teardown()
    assert not (tmp_path / "a.ckpt").exists()


def test_lightning_torch_save_checkpoints_still_load_without_pickle(tmp_path, monkeypatch):
    L.seed_everything(0, verbose=False)
    trainer = _trainer(tmp_path / "plain", None, epochs=1)
    trainer.fit(lightning_fit.Regressor(), lightning_fit.data())
    old = trainer.checkpoint_callback.best_model_path
    expected = torch.load(old, weights_only=False)
    # read by modelsafe's allowlist unpickler (nothing the file names is called), never by torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was used"))
    loaded = ModelsafeCheckpointIO().load_checkpoint(old)
    assert loaded["global_step"] == expected["global_step"]
    for key, value in expected["state_dict"].items():
        assert torch.equal(loaded["state_dict"][key], value)
    # and resuming a fit from it through the plugin works
    trainer = _trainer(tmp_path / "plain", ModelsafeCheckpointIO(), epochs=2)
    trainer.fit(lightning_fit.Regressor(), lightning_fit.data(), ckpt_path=old)
    assert trainer.global_step == 12


class Colour(enum.Enum):
    RED = "red"


def test_lower_checkpoint_stores_lightnings_odd_values_as_plain_data(tmp_path):
    checkpoint = {
        "hyper_parameters": AttributeDict(lr=0.1, args=argparse.Namespace(root=pathlib.Path("/data"), colour=Colour.RED)),
        "callbacks": {"ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}": {"kth_value": torch.tensor(float("inf"))}},
        "pytorch-lightning_version": "2.6.0",
    }
    ms.save(lower_checkpoint(checkpoint), tmp_path / "c.ckpt")
    loaded = ms.load(tmp_path / "c.ckpt")
    assert loaded["hyper_parameters"] == {"lr": 0.1, "args": {"root": "/data", "colour": "red"}}
    assert type(loaded["hyper_parameters"]) is dict
    assert torch.isinf(loaded["callbacks"]["ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min'}"]["kth_value"])
    with pytest.raises(ms.UnsupportedObjectError):
        ms.save(checkpoint, tmp_path / "raw.ckpt")  # what the lowering is for
