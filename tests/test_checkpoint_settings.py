"""Checkpoints settings: a typo is an error before anything is written, a run remembers its
settings, a step names one checkpoint, and every error is a ModelsafeError of the right class."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

import modelsafe as ms
from modelsafe.errors import InvalidArgumentError, RunConflictError


def tree(path) -> list[str]:
    """Every entry under ``path`` (hidden ones too), to show that nothing was written or deleted."""
    out = []
    for root, dirs, files in os.walk(path):
        out += [os.path.relpath(os.path.join(root, n), path) for n in dirs + files]
    return sorted(out)


# -- 1. a monitor missing from the metrics ------------------------------------------------

@pytest.mark.parametrize("async_save", [False, True])
def test_a_misspelled_monitor_is_an_error_before_anything_is_written(tmp_path, async_save):
    ck = ms.Checkpoints(tmp_path, keep_last=1, keep_best=1, monitor="val_loss", async_save=async_save)
    ck.save({"w": np.zeros(2)}, step=0, metrics={"val_loss": 0.1})  # the best one
    ck.save({"w": np.ones(2)}, step=1, metrics={"val_loss": 0.5})
    ck.close()
    before = tree(tmp_path)
    typo = ms.Checkpoints(tmp_path, keep_last=1, keep_best=1, monitor="val_los", async_save=async_save)
    with pytest.raises(InvalidArgumentError) as excinfo:
        typo.save({"w": np.full(2, 2.0)}, step=2, metrics={"val_loss": 0.7})
    typo.close()
    message = str(excinfo.value)
    assert "'val_los'" in message and "val_loss" in message
    assert tree(tmp_path) == before  # nothing written, nothing pruned
    assert ms.Checkpoints(tmp_path).best().step == 0


def test_a_monitor_on_a_fresh_run_needs_the_metric_in_every_save(tmp_path):
    ck = ms.Checkpoints(tmp_path / "run", keep_last=1, keep_best=1, monitor="val_los")
    with pytest.raises(InvalidArgumentError, match="val_los"):
        ck.save({"w": np.zeros(2)}, step=0, metrics={"val_loss": 0.1})
    with pytest.raises(InvalidArgumentError, match=r"metrics of this save are \[\]"):
        ck.save({"w": np.zeros(2)}, step=0)
    ck.close()
    assert not (tmp_path / "run").exists() or tree(tmp_path / "run") == []


# -- settings that would be silently ignored ----------------------------------------------

@pytest.mark.parametrize("kwargs, key", [
    ({"storage_options": {"anon": True}}, "storage_options"),
    ({"mode": "max"}, "mode"),
    ({"keep_best": 2}, "keep_best"),
    ({"mode": "lowest", "monitor": "loss"}, "mode"),
    ({"keep_last": -1}, "keep_last"),
    ({"keep_last": 1.5}, "keep_last"),
    ({"monitor": ""}, "monitor"),
    ({"name": "step{}"}, None),
    ({"name": "step{0}"}, None),
    ({"name": "step{step"}, None),
])
def test_settings_that_cannot_work_are_refused_when_given(tmp_path, kwargs, key):
    with pytest.raises(InvalidArgumentError) as excinfo:
        ms.Checkpoints(tmp_path / "run", **kwargs)
    assert excinfo.value.key == key
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("directory", [None, 3, b"run", ""])
def test_the_run_directory_must_be_a_path(directory):
    with pytest.raises(InvalidArgumentError, match="must be a path"):
        ms.Checkpoints(directory)


def test_bad_save_arguments_are_invalid_argument_errors(tmp_path):
    ck = ms.Checkpoints(tmp_path, name="s{step}-{loss:.2f}")
    with pytest.raises(InvalidArgumentError, match="uses {loss}"):
        ck.save({"a": 1}, step=0)
    with pytest.raises(InvalidArgumentError, match="step must be"):
        ck.save({"a": 1}, step=-1, metrics={"loss": 1.0})
    with pytest.raises(InvalidArgumentError, match="metric 'loss' must be a number"):
        ck.save({"a": 1}, step=0, metrics={"loss": "low"})
    with pytest.raises(InvalidArgumentError, match="metrics must be a dict"):
        ck.save({"a": 1}, step=0, metrics=[("loss", 1.0)])
    with pytest.raises(InvalidArgumentError, match="which must be"):
        ck.load(1.5)
    assert ck.list() == [] and not os.path.exists(tmp_path / ".modelsafe-run.json")
    ck.save({"a": 1}, step=np.int64(3), metrics={"loss": 1.0})  # numpy integers are steps
    assert ck.latest().step == 3
    ck.close()
    assert ms.Checkpoints(tmp_path, keep_last=np.int64(2)).keep_last == 2
    # the documented defaults, passed explicitly, are fine
    assert ms.Checkpoints(tmp_path, keep_last=None, keep_best=None, monitor=None, mode="min", name="step{step}").mode == "min"


# -- 4. a run remembers its settings ------------------------------------------------------

def make_run(path) -> None:
    ck = ms.Checkpoints(path, keep_last=1, keep_best=1, monitor="acc", mode="max", name="e{step}-acc{acc:.3f}")
    for step, acc in enumerate([0.5, 0.9, 0.6, 0.7]):
        ck.save({"w": np.full(2, step)}, step=step, metrics={"acc": acc})
    ck.close()


def test_a_run_opened_without_arguments_ranks_loads_and_prunes_as_created(tmp_path):
    make_run(tmp_path)
    ck = ms.Checkpoints(tmp_path)
    assert (ck.monitor, ck.mode, ck.keep_last, ck.keep_best, ck.name_template) == ("acc", "max", 1, 1, "e{step}-acc{acc:.3f}")
    assert [i.name for i in ck.list()] == ["e1-acc0.900", "e3-acc0.700"]
    assert ck.best().step == 1 and ck.load("best")["w"][0] == 1
    ck.save({"w": np.full(2, 4)}, step=4, metrics={"acc": 0.8})  # same name template, same retention
    assert [i.name for i in ck.list()] == ["e1-acc0.900", "e4-acc0.800"]
    ck.close()


def test_arguments_given_override_the_run_and_mode_follows_monitor(tmp_path):
    make_run(tmp_path)
    other = ms.Checkpoints(tmp_path, monitor="loss")
    assert (other.monitor, other.mode, other.keep_last) == ("loss", "min", 1)
    assert ms.Checkpoints(tmp_path, mode="min").best().step == 3  # worst acc kept: 0.7 at step 3 vs 0.9
    everything = ms.Checkpoints(tmp_path, keep_last=None, keep_best=None)
    assert (everything.keep_last, everything.keep_best, everything.monitor) == (None, None, "acc")


def test_a_run_file_with_unusable_settings_is_named(tmp_path):
    make_run(tmp_path)
    run_file = tmp_path / ".modelsafe-run.json"
    run_file.write_text(run_file.read_text().replace('"mode": "max"', '"mode": "sideways"'))
    with pytest.warns(UserWarning, match=r"settings of the run are not used.*\.modelsafe-run\.json"):
        ck = ms.Checkpoints(tmp_path)           # reading still works: the checkpoints are fine
    assert ck.latest() is not None
    with pytest.raises(ms.CorruptCheckpointError, match=r"\.modelsafe-run\.json.*mode"):
        ck.save({"w": np.zeros(1)}, step=99)    # writing names the damaged file, before anything changes
    ck.close()


def test_load_best_of_an_existing_run_works_without_monitor(tmp_path):
    make_run(tmp_path)
    assert ms.Checkpoints(tmp_path).load("best")["w"][0] == 1


# -- 3. one step, one checkpoint ------------------------------------------------------------

def test_a_step_already_committed_under_another_name_is_refused(tmp_path):
    ck = ms.Checkpoints(tmp_path, name="s{step}-loss{loss:.2f}")
    ck.save({"v": 1}, step=3, metrics={"loss": 0.5})
    before = tree(tmp_path)
    with pytest.raises(RunConflictError) as excinfo:
        ck.save({"v": 2}, step=3, metrics={"loss": 0.4})
    assert "s3-loss0.50" in str(excinfo.value) and excinfo.value.key == "s3-loss0.50"
    assert tree(tmp_path) == before
    ck.save({"v": 3}, step=3, metrics={"loss": 0.5})  # the same name again: replaced
    assert [i.name for i in ck.list()] == ["s3-loss0.50"] and ck.load(3) == {"v": 3}
    ck.close()


def test_a_step_held_by_several_checkpoints_is_never_picked_silently(tmp_path):
    ck = ms.Checkpoints(tmp_path, name="s{step}-{tag}")
    info = ck.save({"v": 1}, step=3, metrics={"tag": 1})
    ck.close()
    shutil.copytree(info.path, tmp_path / "s3-copy")  # as an older modelsafe could leave it
    with pytest.raises(RunConflictError, match=r"step 3 is held by 2 checkpoints \('s3-1', 's3-copy'\)"):
        ms.Checkpoints(tmp_path).load(3)
    with pytest.raises(RunConflictError, match="step 3"):
        ms.Checkpoints(tmp_path).load("3")
    assert ms.Checkpoints(tmp_path).load("s3-copy") == {"v": 1}


# -- 7. run-state errors ----------------------------------------------------------------------

def test_run_state_conditions_are_run_conflict_errors(tmp_path):
    src = ms.Checkpoints(tmp_path / "a", monitor="loss")
    src.save({"v": 1}, step=0, metrics={"loss": 1.0})
    dst = ms.Checkpoints(tmp_path / "b")
    dst.save({"v": 2}, step=5)
    dst.close()
    with pytest.raises(RunConflictError, match="already holds checkpoints"):
        src.fork(tmp_path / "b")
    with pytest.raises(InvalidArgumentError, match="different destination"):
        src.fork(tmp_path / "a")
    src.close()
    shutil.copytree(tmp_path / "a" / "step0", tmp_path / "c" / "step0")  # a checkpoint of run a, in run c
    other = ms.Checkpoints(tmp_path / "c")
    with pytest.raises(RunConflictError, match="not written by this run"):
        other.save({"v": 3}, step=0)
    other.close()


def test_best_without_a_monitor_is_a_modelsafe_error(tmp_path):
    ck = ms.Checkpoints(tmp_path)
    ck.save({"v": 1}, step=0)
    with pytest.raises(InvalidArgumentError, match="no monitor"):
        ck.best()
    with pytest.raises(ms.CheckpointNotFoundError, match="no monitor"):
        ck.load("best")
    ck.close()


# -- 2. the recorded RNG states are checked like any field of a file --------------------------

@pytest.mark.parametrize("block", [
    [], {"python": {"version": 3, "state": [1, 2], "gauss": None}}, {"numpy": {"bit_generator": "PCG64"}},
    {"numpy": {"bit_generator": "MT19937", "key": [2**32] * 624, "pos": 0, "has_gauss": 0, "gauss": 0.0}},
    {"torch": "not base64!"}, {"torch": 5}, {"cuda": "x"}, {"os": "system"},
])
def test_a_hostile_rng_block_is_refused_and_changes_no_generator(tmp_path, block):
    import json
    import random

    ck = ms.Checkpoints(tmp_path)
    info = ck.save({"a": 1}, step=0)
    manifest_path = os.path.join(info.path, "manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    manifest["rng"] = block
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    random.seed(11)
    np.random.seed(11)
    with pytest.raises(ms.CorruptCheckpointError, match="RNG states"):
        ck.load_into({"a": 0})
    assert random.random() == random.Random(11).random()
    assert np.random.rand() == np.random.RandomState(11).rand()
    assert ck.load_into({"a": 0}, rng=False).step == 0  # rng=False reads no RNG state
    ck.close()


# -- more settings that were silently ignored ---------------------------------------------------

def test_a_metric_named_step_is_refused(tmp_path):
    ck = ms.Checkpoints(tmp_path, name="s{step}")
    with pytest.raises(InvalidArgumentError, match="named 'step'"):
        ck.save({"a": 1}, step=3, metrics={"step": 100})
    assert ck.list() == []
    ck.close()


def test_bind_keyword_arguments_need_a_save_function(tmp_path):
    ck = ms.Checkpoints(tmp_path)
    with pytest.raises(InvalidArgumentError, match="no save= function"):
        ck.bind(load=lambda path: None, real=True)
    ck.close()


def test_export_of_a_key_the_state_lacks_is_an_error_not_the_whole_state(tmp_path):
    ck = ms.Checkpoints(tmp_path / "run")
    ck.save({"model": {"w": np.ones(2)}, "optimizer": {"m": np.zeros(2)}}, step=0)
    with pytest.raises(InvalidArgumentError, match=r"no entry 'modle'.*'model', 'optimizer'"):
        ck.export(tmp_path / "out.safetensors", which="latest", key="modle")
    assert not (tmp_path / "out.safetensors").exists()
    ck.export(tmp_path / "out.safetensors", which="latest")
    assert set(ms.load(tmp_path / "out.safetensors")) == {"w"}
    ck.close()
    plain = ms.Checkpoints(tmp_path / "plain")  # a state_dict: the default key falls back to the whole state
    plain.save({"w": np.ones(2)}, step=0)
    plain.export(tmp_path / "plain.safetensors", which="latest")
    assert set(ms.load(tmp_path / "plain.safetensors")) == {"w"}
    plain.close()


def test_recording_and_restoring_the_rngs_never_imports_torch(tmp_path):
    import subprocess
    import sys

    script = (
        "import sys, random, numpy as np, modelsafe as ms\n"
        f"ck = ms.Checkpoints({str(tmp_path)!r})\n"
        "random.seed(1); ck.save({'a': np.ones(2)}, step=0); x = random.random()\n"
        "ck.load_into({'a': np.zeros(2)}); assert random.random() == x\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_a_refused_save_does_not_record_its_settings(tmp_path):
    ck = ms.Checkpoints(tmp_path, name="s{step}-{loss:.1f}", monitor="loss")
    ck.save({"v": 1}, step=0, metrics={"loss": 0.5})
    ck.close()
    run_file = (tmp_path / ".modelsafe-run.json").read_text()
    other = ms.Checkpoints(tmp_path, name="t{step}", monitor="loss", mode="max")
    with pytest.raises(RunConflictError, match="step 0 is already committed"):
        other.save({"v": 2}, step=0, metrics={"loss": 0.1})
    other.close()
    assert (tmp_path / ".modelsafe-run.json").read_text() == run_file
