"""The run file and checkpoint manifests are checked field by field; retention trusts only what reads back.

A damaged run file fails the save before anything is committed or deleted; a
checkpoint that does not read back through the readers' parser is never the reason
another one is deleted; load, open, load_into, show and verify agree on a damaged manifest.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import modelsafe as ms
from modelsafe.storage.commit import RUN_FILE

from cli_support import invoke


def run_with(tmp_path, steps=(0, 1), keep_last=1):
    run = tmp_path / "run"
    ck = ms.Checkpoints(run, keep_last=keep_last)
    for step in steps:
        ck.save({"w": np.full(3, step)}, step=step)
    ck.close()
    return run


def edit_run_file(run, **fields):
    path = run / RUN_FILE
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))


BAD_RUN_FIELDS = [
    {"lineage": {"not": "a list"}},
    {"lineage": "x"},
    {"lineage": [{"run": "r", "run_id": "i", "checkpoint": "c", "step": "seven", "manifest_xxh3": "0" * 16}]},
    {"lineage": [7]},
    {"run_id": 12},
    {"run_id": ["a"]},
    {"created": 5},
    {"monitor": 5},
    {"mode": "sideways"},
    {"keep_last": "2"},
    {"keep_best": -1},
    {"name": ["step{step}"]},
    {"run_id": "x" * 10_000},
]


@pytest.mark.parametrize("fields", BAD_RUN_FIELDS, ids=lambda f: json.dumps(f)[:40])
def test_a_damaged_run_file_fails_the_save_before_anything_is_committed_or_deleted(tmp_path, fields):
    run = run_with(tmp_path)
    edit_run_file(run, **fields)
    ck = ms.Checkpoints(run, keep_last=1)
    with pytest.raises(ms.CorruptCheckpointError) as excinfo:
        ck.save({"w": np.zeros(3)}, step=2)
    ck.close()
    message = str(excinfo.value)
    assert RUN_FILE in message and "restore the run file" in message
    fresh = ms.Checkpoints(run)
    assert [i.step for i in fresh.list()] == [1]        # the last good one is still there
    assert list(ms.load(run)["w"]) == [1, 1, 1]          # and a new process resumes from it


def test_a_run_file_that_is_not_json_is_named(tmp_path):
    run = run_with(tmp_path)
    (run / RUN_FILE).write_text("{not json")
    with pytest.raises(ms.CorruptCheckpointError, match="not valid JSON"):
        ms.Checkpoints(run).save({"w": np.zeros(1)}, step=2)


def test_retention_never_deletes_on_the_strength_of_a_checkpoint_that_does_not_read_back(tmp_path, monkeypatch):
    from modelsafe.storage.commit import LocalRunStorage

    run = run_with(tmp_path)
    real = LocalRunStorage.read_manifest

    def damaged_new_manifest(self, name):  # e.g. the disk returns other bytes than were written
        return b"{damaged" if name == "step2" else real(self, name)

    monkeypatch.setattr(LocalRunStorage, "read_manifest", damaged_new_manifest)
    ck = ms.Checkpoints(run, keep_last=1)
    with pytest.raises(ms.CorruptCheckpointError, match="does not read back"):
        ck.save({"w": np.zeros(3)}, step=2)
    ck.close()
    monkeypatch.undo()
    assert os.path.isdir(run / "step1")                  # retention did not run


def damage_manifest(checkpoint, edit):
    path = checkpoint / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def set_aliases(value):
    return lambda m: m.__setitem__("aliases", value)


def set_info(key, value):
    return lambda m: m["checkpoint"].__setitem__(key, value)


def set_tensor(key, value):
    return lambda m: m["tensors"]["w"].__setitem__(key, value)


BAD_MANIFEST_FIELDS = {
    "aliases-list": set_aliases(["w"]),
    "aliases-string": set_aliases("w"),
    "aliases-number-target": set_aliases({"v": 3}),
    "aliases-missing-target": set_aliases({"v": "nothing"}),
    "aliases-shadow-a-tensor": set_aliases({"w": "w"}),
    "tensor-file-list": set_tensor("file", ["x"]),
    "tensor-file-unknown": set_tensor("file", "state-00009-of-00009.safetensors"),
    "tensor-framework-number": set_tensor("framework", 3),
    "tensor-attrs-list": set_tensor("attrs", []),
    "tensor-checksum-short": set_tensor("xxh3", "abc"),
    "step-string": set_info("step", "1"),
    "name-number": set_info("name", 1),
    "metrics-string": set_info("metrics", {"loss": "low"}),
    "metrics-list": set_info("metrics", [1]),
    "time-number": set_info("time", 5),
    "run-id-list": set_info("run_id", []),
    "lineage-dict": set_info("lineage", {"a": 1}),
    "lineage-entry-bad": set_info("lineage", [{"run": 1}]),
    "framework-number": lambda m: m.__setitem__("framework", 7),
    "shards-twice": lambda m: m["shards"].append(dict(m["shards"][0])),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFEST_FIELDS))
def test_every_reader_agrees_a_damaged_checkpoint_manifest_is_corrupt(tmp_path, case):
    run = tmp_path / "run"
    ck = ms.Checkpoints(run)
    info = ck.save({"w": np.arange(3.0)}, step=0)
    ck.close()
    checkpoint = run / info.name
    damage_manifest(checkpoint, BAD_MANIFEST_FIELDS[case])
    with pytest.raises(ms.CorruptCheckpointError):
        ms.load(checkpoint)
    with pytest.raises(ms.CorruptCheckpointError):
        with ms.open(checkpoint):
            pass
    with pytest.raises(ms.CorruptCheckpointError):
        ms.load_into({"w": np.zeros(3)}, checkpoint)
    verified = invoke("verify", checkpoint)
    assert verified.code == 1 and "all checksums match" not in verified.out
    shown = invoke("show", checkpoint)
    assert shown.code == 1 and "Traceback" not in shown.out + shown.err


def test_a_checkpoint_whose_manifest_is_damaged_is_skipped_by_listing_with_the_reason(tmp_path):
    run = run_with(tmp_path, steps=(0, 1), keep_last=None)
    damage_manifest(run / "step1", set_aliases(["w"]))
    with pytest.warns(UserWarning, match="aliases"):
        assert [i.step for i in ms.Checkpoints(run).list()] == [0]
    with pytest.raises(ms.CorruptCheckpointError, match="aliases"):
        ms.Checkpoints(run).load("step1")
