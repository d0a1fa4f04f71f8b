"""RUN@best | latest | <name> | <step> in the library: ms.load, ms.open, ms.load_into."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import modelsafe as ms
from modelsafe.addresses import parse_address
from modelsafe.errors import InvalidArgumentError, RunConflictError


def make_run(path, losses=(0.9, 0.4, 0.6, 0.7)):
    """One checkpoint per loss, step = index, w = step; best by val_loss: step 1; latest: step 3."""
    ck = ms.Checkpoints(path, monitor="val_loss", name="step{step:03d}")
    for step, loss in enumerate(losses):
        ck.save({"w": np.full(3, step, np.float32), "step": step}, step=step, metrics={"val_loss": loss})
    ck.close()


@pytest.fixture
def run(tmp_path):
    make_run(tmp_path / "exp1")
    return tmp_path / "exp1"


@pytest.mark.parametrize("selector, step", [("best", 1), ("latest", 3), ("2", 2), ("step000", 0)])
def test_ms_load_open_and_load_into_take_addresses(run, selector, step):
    assert ms.load(f"{run}@{selector}")["step"] == step
    with ms.open(f"{run}@{selector}") as reader:
        assert float(reader.get("w", framework="numpy")[0]) == step
    target = {"w": np.zeros(3, np.float32), "step": -1}
    ms.load_into(target, f"{run}@{selector}")
    assert target["step"] == step and target["w"][0] == step


def test_an_existing_path_with_an_at_sign_opens_as_itself(tmp_path, run):
    weird = tmp_path / "exp1@best"  # a file whose name looks like an address of run exp1
    ms.save({"literal": np.ones(2)}, weird)
    assert set(ms.load(weird)) == {"literal"}
    other = tmp_path / "user@host"
    make_run(other, (0.5, 0.2))
    assert ms.load(other)["step"] == 1 and ms.load(f"{other}@0")["step"] == 0


def test_bad_addresses_say_what_is_wrong(tmp_path, run):
    with pytest.raises(ms.CheckpointNotFoundError, match="no run directory"):
        ms.load(f"{tmp_path / 'absent'}@best")
    with pytest.raises(ms.CheckpointNotFoundError, match="no committed checkpoint 'nope'"):
        ms.load(f"{run}@nope")
    with pytest.raises(ms.CheckpointNotFoundError, match="checkpoint 99"):
        ms.open(f"{run}@99")
    with pytest.raises(InvalidArgumentError, match="nothing after '@'"):
        ms.load(f"{run}@")
    single = tmp_path / "one.safetensors"
    ms.save({"a": np.ones(1)}, single)
    with pytest.raises(InvalidArgumentError, match="is a file, not a run directory"):
        ms.load(f"{single}@best")


def test_best_of_a_run_without_monitor_is_explained(tmp_path):
    ck = ms.Checkpoints(tmp_path / "plain")
    ck.save({"a": 1}, step=0)
    ck.close()
    with pytest.raises(ms.CheckpointNotFoundError, match="no monitored metric"):
        ms.load(f"{tmp_path / 'plain'}@best")


def test_a_step_held_twice_is_an_error_listing_both(run):
    shutil.copytree(run / "step002", run / "copy-of-2")
    with pytest.raises(RunConflictError, match=r"step 2 is held by 2 checkpoints \('copy-of-2', 'step002'\)|"
                                               r"step 2 is held by 2 checkpoints \('step002', 'copy-of-2'\)"):
        ms.load(f"{run}@2")
    assert ms.load(f"{run}@copy-of-2")["step"] == 2


def test_parse_address():
    assert parse_address("model.safetensors").selector is None
    assert parse_address("runs/exp1@12").step == 12
    assert parse_address("runs/exp1@step012").step is None


def test_an_at_sign_in_a_parent_folder_is_not_an_address(tmp_path):
    (tmp_path / "user").mkdir()
    missing = tmp_path / "user@host" / "model.safetensors"
    with pytest.raises(ms.CheckpointNotFoundError, match="no such file"):
        ms.load(missing)
    assert parse_address(str(missing)).selector is None
