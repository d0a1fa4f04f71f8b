"""Readers racing the writer's retention: a checkpoint removed while read is "removed", never "corrupt".

The deterministic tests remove the checkpoint at the exact moment that matters; the
race tests run a real writer process (keep_last=1, saving in a loop) beside readers
and ``modelsafe verify`` for a bounded number of rounds, with no timing assertion.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import modelsafe as ms
from modelsafe import directory

from cli_support import invoke


def saved_run(tmp_path, steps=(0, 1)):
    run = tmp_path / "run"
    ck = ms.Checkpoints(run)
    infos = [ck.save({"w": np.full(8, step, np.float32)}, step=step) for step in steps]
    return run, ck, infos


def test_a_listed_checkpoint_deleted_before_it_is_opened_is_removed_not_missing(tmp_path):
    run, writer, (oldest, _) = saved_run(tmp_path)
    reader = ms.Checkpoints(run)
    writer.delete(oldest.name)
    with pytest.raises(ms.CheckpointRemovedError, match="removed while it was being read"):
        reader.load(oldest)
    with pytest.raises(ms.CheckpointRemovedError):
        reader.load_into({"w": np.zeros(8, np.float32)}, oldest)
    writer.close()


def test_a_checkpoint_renamed_away_while_its_shards_are_opened_is_removed_not_damaged(tmp_path, monkeypatch):
    run, writer, (oldest, _) = saved_run(tmp_path)
    real_open = directory.open_regular  # every file of a local checkpoint is opened through modelsafe.directory

    def prune_then_open(name, **kwargs):
        if name.endswith(".safetensors"):  # retention strikes between manifest and shard
            writer.delete(oldest.name)
        return real_open(name, **kwargs)

    monkeypatch.setattr(directory, "open_regular", prune_then_open)
    with pytest.raises(ms.CheckpointRemovedError) as excinfo:
        ms.load(oldest.path)
    assert not isinstance(excinfo.value, ms.CorruptCheckpointError)
    assert "removed while it was being read" in str(excinfo.value) and "restore" not in str(excinfo.value)
    writer.close()


def test_a_shard_deleted_by_hand_is_still_damage(tmp_path):
    run, writer, (oldest, _) = saved_run(tmp_path)
    writer.close()
    os.remove(os.path.join(oldest.path, "state-00001-of-00001.safetensors"))
    with pytest.raises(ms.CorruptCheckpointError, match="missing"):
        ms.load(oldest.path)


def test_verify_of_a_run_reports_a_checkpoint_pruned_mid_verify_as_removed(tmp_path, monkeypatch):
    from modelsafe.cli import verify as verify_cli
    from modelsafe.verification import run_targets

    run, writer, (oldest, _) = saved_run(tmp_path)

    def listing_then_prune(path):
        targets = run_targets(path)
        writer.delete(oldest.name)
        return targets

    monkeypatch.setattr(verify_cli, "run_targets", listing_then_prune)
    result = invoke("verify", run, "--json")
    assert result.code == 0, result.out + result.err
    by_name = {r["name"]: r for r in result.json()["results"]}
    assert by_name[oldest.name]["removed"] is True and by_name[oldest.name]["ok"] is True
    assert by_name["step1"]["tensors"] == 1
    writer.close()


WRITER = textwrap.dedent("""
    import sys, numpy as np, modelsafe as ms
    ck = ms.Checkpoints(sys.argv[1], keep_last=1)
    for step in range(int(sys.argv[2])):
        ck.save({"w": np.full(256, step, np.float32), "b": np.arange(64) + step}, step=step)
        print(step, flush=True)
    ck.close()
""")


def race(tmp_path, saves, read_once):
    """Run ``read_once`` in a loop while a writer process saves ``saves`` checkpoints with keep_last=1."""
    run = tmp_path / "run"
    ck = ms.Checkpoints(run, keep_last=1)
    ck.save({"w": np.zeros(256, np.float32), "b": np.arange(64)}, step=0)
    ck.close()
    env = dict(os.environ)
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(run), str(saves)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    outcomes = []
    try:
        while writer.poll() is None:
            outcomes.append(read_once(run))
    finally:
        out, err = writer.communicate(timeout=300)
    assert writer.returncode == 0, err
    outcomes.append(read_once(run))
    return outcomes


def load_oldest(run):
    reader = ms.Checkpoints(run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        infos = reader.list()
    try:
        state = reader.load(infos[0])
    except ms.CheckpointRemovedError:
        return "removed"
    assert state["w"][0] == infos[0].step  # what loads is the checkpoint that was asked for, whole
    return "loaded"


def saves(soak, sample):
    """Saves the racing writer makes: a bounded sample by default, many more in the soak run."""
    return sample * 10 if soak else sample


def test_loading_the_oldest_while_the_writer_prunes_is_loaded_or_removed_never_corrupt(tmp_path, soak):
    outcomes = race(tmp_path, saves(soak, 20), load_oldest)
    assert set(outcomes) <= {"loaded", "removed"} and outcomes[-1] == "loaded"


def load_run(run):
    ms.load(run)  # the latest: a checkpoint pruned between listing and opening is looked up again
    return "loaded"


def test_loading_a_live_run_always_finds_its_latest(tmp_path, soak):
    assert set(race(tmp_path, saves(soak, 20), load_run)) == {"loaded"}


def verify_run(run):
    result = invoke("verify", run, "--json")
    assert result.code == 0, result.out + result.err
    return "ok"


def test_verify_of_a_live_run_never_reports_corruption(tmp_path, soak):
    assert set(race(tmp_path, saves(soak, 15), verify_run)) == {"ok"}
