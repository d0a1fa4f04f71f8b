"""Deduplication in ms.Checkpoints: a shard equal to one of an earlier checkpoint is hard-linked, not written.

Disk use is measured as the file system sees it: each inode counted once.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import warnings

import numpy as np
import pytest

import modelsafe as ms
from modelsafe import checkpoint_dir
from modelsafe.checkpoint_dir import CheckpointSource
from modelsafe.cli.output import human_bytes
from modelsafe.verification import Problem, check

from cli_support import invoke

MIB = 1 << 20


def disk_bytes(directory) -> int:
    """Bytes of every regular file under ``directory``, each inode once (what the disk holds)."""
    seen, total = set(), 0
    for root, _dirs, files in os.walk(directory):
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def frozen_base(total_mib: int = 64, layers: int = 8) -> dict:
    rng = np.random.default_rng(0)
    rows = total_mib * MIB // layers // 4 // 1024
    return {f"layer{i}": {"weight": rng.standard_normal((rows, 1024), dtype=np.float32),
                          "bias": rng.standard_normal(1024, dtype=np.float32)} for i in range(layers)}


def head(step: int) -> dict:
    rng = np.random.default_rng(1000 + step)
    return {"weight": rng.standard_normal((128, 1024), dtype=np.float32)}  # 0.5 MiB, trained


def state(base: dict, step: int) -> dict:
    return {"model": {"base": base, "head": head(step)}, "step": step}


def assert_same(a, b) -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            assert_same(a[key], b[key])
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    else:
        assert a == b


def test_frozen_base_fine_tuning_acceptance(tmp_path):
    """64 MiB frozen base + 0.5 MiB trained head, 8 checkpoints: a full copy each would be 516 MiB."""
    run = tmp_path / "run"
    base = frozen_base()
    with ms.Checkpoints(run) as ck:
        for step in range(8):
            ck.save(state(base, step), step=step)
        assert len(ck.list()) == 8
        for info in ck.list():
            assert_same(ck.load(info.name), state(base, info.step))
    assert disk_bytes(run) < 96 * MIB
    result = invoke("verify", run)
    assert result.code == 0, result.out + result.err
    assert invoke("prune", run, "--keep-last", "2").code == 0
    assert disk_bytes(run) < 80 * MIB
    with ms.Checkpoints(run) as ck:
        assert [i.step for i in ck.list()] == [6, 7]
        for info in ck.list():
            assert_same(ck.load(info.name), state(base, info.step))
    assert invoke("verify", run).code == 0


def test_ls_shows_new_bytes_and_disk_bytes(tmp_path):
    run = tmp_path / "run"
    base = frozen_base(8, 2)
    with ms.Checkpoints(run) as ck:
        for step in range(3):
            ck.save(state(base, step), step=step)
    listed = json.loads(invoke("ls", run, "--json").out)
    rows = listed["checkpoints"]
    assert rows[0]["new_bytes"] == rows[0]["size"]          # the first wrote everything
    assert all(r["new_bytes"] < MIB < 8 * MIB < r["size"] for r in rows[1:])  # later ones: the head
    run_files = sum(os.path.getsize(run / name) for name in (".modelsafe-run.json", ".modelsafe.lock"))
    assert listed["run_disk_bytes"] == sum(r["new_bytes"] for r in rows) == disk_bytes(run) - run_files
    table = invoke("ls", run).out
    assert "on disk" in table and "new" in table


def test_dedup_false_writes_every_byte(tmp_path):
    run = tmp_path / "run"
    base = frozen_base(8, 2)
    with ms.Checkpoints(run, dedup=False) as ck:
        for step in range(3):
            ck.save(state(base, step), step=step)
        assert disk_bytes(run) > 3 * 8 * MIB
        assert all(os.stat(os.path.join(i.path, f)).st_nlink == 1 for i in ck.list() for f in os.listdir(i.path))
    with pytest.raises(ms.InvalidArgumentError, match="dedup"):
        ms.Checkpoints(tmp_path / "other", dedup="yes")


def test_dedup_is_on_by_default_async_and_after_reopening(tmp_path):
    run = tmp_path / "run"
    base = frozen_base(8, 2)
    with ms.Checkpoints(run, async_save=True) as ck:
        for step in range(3):
            ck.save(state(base, step), step=step)
    with ms.Checkpoints(run) as ck:  # a new writer finds the shards of the run from its manifests
        ck.save(state(base, 3), step=3)
        assert_same(ck.load(), state(base, 3))
    assert disk_bytes(run) < 8 * MIB + 5 * MIB


@pytest.mark.parametrize("code", [errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK])
def test_a_file_system_refusing_links_gets_full_copies(tmp_path, monkeypatch, code):
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    run = tmp_path / "run"
    base = frozen_base(8, 2)
    monkeypatch.setattr(checkpoint_dir.os, "link", refuse)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ms.Checkpoints(run) as ck:
            for step in range(3):
                ck.save(state(base, step), step=step)
            for info in ck.list():
                assert_same(ck.load(info.name), state(base, info.step))
    refusals = [w for w in caught if "refused a hard link" in str(w.message)]
    assert len(refusals) == 1 and "dedup=False" in str(refusals[0].message)
    assert disk_bytes(run) > 3 * 8 * MIB


def test_each_checkpoint_stands_alone(tmp_path):
    run = tmp_path / "run"
    base = frozen_base(8, 2)
    with ms.Checkpoints(run) as ck:
        for step in range(3):
            ck.save(state(base, step), step=step)
        middle = ck.list()[1]
    copy = tmp_path / "copy"
    shutil.copytree(middle.path, copy)
    shutil.rmtree(run)
    assert_same(ms.load(copy), state(base, 1))
    assert not [e for e in check(copy) if isinstance(e, Problem)]


def test_delete_prune_fork_and_export_keep_shared_payloads(tmp_path):
    run = tmp_path / "run"
    base = frozen_base(8, 2)
    with ms.Checkpoints(run, keep_last=3) as ck:
        for step in range(5):  # retention removes steps 0 and 1, which wrote the base
            ck.save(state(base, step), step=step)
        ck.delete("step2")
        forked = ck.fork(tmp_path / "fork", "step3")
        ck.export(tmp_path / "model.safetensors", "step4")
        for info in ck.list():
            assert_same(ck.load(info.name), state(base, info.step))
    with forked:
        assert_same(forked.load(), state(base, 3))
        forked.save(state(base, 9), step=9)
        assert_same(forked.load(), state(base, 9))
    assert_same(ms.load(tmp_path / "model.safetensors"), {"base": base, "head": head(4)})
    assert disk_bytes(run) < 8 * MIB + 3 * MIB


def test_verify_hashes_a_shared_shard_once_and_blames_every_checkpoint(tmp_path, monkeypatch):
    run = tmp_path / "run"
    base = frozen_base(8, 2)
    with ms.Checkpoints(run) as ck:
        for step in range(3):
            ck.save(state(base, step), step=step)
        infos = ck.list()
    verified = []
    original = CheckpointSource.verify_record
    monkeypatch.setattr(CheckpointSource, "verify_record",
                        lambda self, record, data: (verified.append(record.name), original(self, record, data))[1])
    assert invoke("verify", run).code == 0
    assert verified.count("model.base.layer0.weight") == 1  # shared by all three checkpoints
    assert verified.count("model.head.weight") == 3         # one per checkpoint
    with CheckpointSource(infos[0].path) as source:
        record = source.records["model.base.layer0.weight"]
        shard = os.path.join(infos[0].path, record.file)
        offset = source._shards[record.file].data_start + record.begin
    with open(shard, "r+b") as f:  # damage the one copy on disk
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    result = invoke("verify", run, "--json")
    assert result.code == 1
    targets = [t for t in json.loads(result.out)["results"]]
    assert [t["name"] for t in targets] == [i.name for i in infos]
    for target, info in zip(targets, infos):  # each checkpoint blamed, under its own path
        assert [f["tensor"] for f in target["findings"]] == ["model.base.layer0.weight"]
        assert target["findings"][0]["file"].startswith(info.path)
        assert info.path in target["findings"][0]["problem"]


def test_a_manifest_claiming_another_shards_identity_costs_a_write_not_a_wrong_shard(tmp_path):
    """The index comes from manifests, which may lie: a link is kept only if its header is the one to write."""
    run = tmp_path / "run"
    first = {"a": np.full(MIB, 1, np.float32), "b": np.full(MIB, 2, np.float32)}  # two 4 MiB shards, same size
    with ms.Checkpoints(run) as ck:
        info = ck.save(first, step=0)
    manifest_path = os.path.join(info.path, "manifest.json")
    with open(manifest_path) as f:
        manifest = json.load(f)
    placed = {name: entry["file"] for name, entry in manifest["tensors"].items()}
    shard_b = next(s for s in manifest["shards"] if s["file"] == placed["b"])
    shard_a = next(s for s in manifest["shards"] if s["file"] == placed["a"])
    shard_b["identity"], shard_a["identity"] = shard_a["identity"], shard_b["identity"]  # each claims the other
    os.chmod(manifest_path, 0o644)
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    with ms.Checkpoints(run) as ck:  # a new writer indexes the lying manifest
        ck.save(first, step=1)
        assert_same(ck.load("step1"), first)
        assert not [e for e in check(ck.info("step1").path) if isinstance(e, Problem)]
        new, _disk = checkpoint_dir.disk_usage([os.fspath(i.path) for i in ck.list()])
    assert new[1] > 8 * MIB  # both shards written again, none linked wrongly


def test_prune_reports_the_disk_bytes_it_frees(tmp_path):
    run = tmp_path / "run"
    base = frozen_base(8, 2)
    with ms.Checkpoints(run) as ck:
        for step in range(3):
            ck.save(state(base, step), step=step)
    before = disk_bytes(run)
    result = invoke("prune", run, "--keep-last", "1")
    assert result.code == 0
    freed = before - disk_bytes(run)
    assert freed < 2 * MIB  # the two heads and manifests; the base stays with step2
    assert f"deleted 2 checkpoint(s), {human_bytes(freed)}" in " ".join(result.out.split())


def test_linked_shards_are_not_fsynced_again(tmp_path, monkeypatch):
    """A linked shard is durable since its own commit: the fsync of its new directory entry suffices."""
    run = tmp_path / "run"
    base = frozen_base(8, 2)
    with ms.Checkpoints(run) as ck:
        ck.save(state(base, 0), step=0)
        synced = []
        real_fsync = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_ino), real_fsync(fd))[1])
        ck.save(state(base, 1), step=1)
        monkeypatch.undo()
        shared = {os.stat(os.path.join(ck.info("step1").path, f)).st_ino for f in os.listdir(ck.info("step1").path)} \
            & {os.stat(os.path.join(ck.info("step0").path, f)).st_ino for f in os.listdir(ck.info("step0").path)}
    assert len(shared) == 2 and not shared & set(synced)  # the two base layers: linked, never fsynced
    assert len(synced) >= 3  # the new shard, the manifest, the directories


def test_the_index_forgets_deleted_checkpoints(tmp_path):
    with ms.Checkpoints(tmp_path / "run", keep_last=2) as ck:
        for step in range(10):
            ck.save({"frozen": np.ones(MIB, np.float32), "head": np.full(10, step)}, step=step)
        ck.delete("step8")
        kept = {os.fspath(i.path) for i in ck.list()}
        assert {entry[0] for entry in ck._shard_index.shards.values()} <= kept
