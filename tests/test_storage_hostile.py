"""Hostile entries in a run: links, FIFOs, devices and huge files are never followed, read whole or waited on.

Listing skips them with a warning; addressing one directly is a CorruptCheckpointError
naming the file.  Nothing inside a checkpoint (manifest, shards, ``files/``) may be a
link, for load, verify, fork and export alike.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import warnings

import numpy as np
import pytest

import modelsafe as ms
from modelsafe.storage.commit import MAX_MANIFEST_BYTES, MAX_RUN_FILE, RUN_FILE

from cli_support import invoke

SHARD = "state-00001-of-00001.safetensors"
pytestmark = pytest.mark.filterwarnings("ignore:skipping:UserWarning")  # listing skips what these tests plant


@contextlib.contextmanager
def no_hang(seconds: int = 60):
    """Turn a hang (a FIFO opened for reading waits for a writer forever) into a failure."""
    def hung(signum, frame):
        raise AssertionError("hung: a FIFO or device was opened and waited on")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def two_checkpoints(run):
    ck = ms.Checkpoints(run)
    ck.save({"w": np.arange(4)}, step=0)
    ck.save({"w": np.arange(4) + 1}, step=1)
    ck.close()
    return run / "step0", run / "step1"


def listed(run):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = [info.name for info in ms.Checkpoints(run).list()]
    return names, " ".join(str(w.message) for w in caught)


def make_hostile_manifest(checkpoint, kind):
    manifest = checkpoint / "manifest.json"
    manifest.unlink()
    if kind == "link-to-dev-zero":
        os.symlink("/dev/zero", manifest)
    elif kind == "fifo":
        os.mkfifo(manifest)
    elif kind == "sparse-over-limit":
        with open(manifest, "wb") as f:
            f.truncate(MAX_MANIFEST_BYTES + 1)
    elif kind == "directory":
        manifest.mkdir()


@pytest.mark.parametrize("kind", ["link-to-dev-zero", "fifo", "sparse-over-limit", "directory"])
def test_a_hostile_manifest_is_skipped_by_listing_and_named_when_addressed(tmp_path, kind):
    run = tmp_path / "run"
    _, newest = two_checkpoints(run)
    make_hostile_manifest(newest, kind)
    with no_hang():
        names, warned = listed(run)
        assert names == ["step0"]
        assert "step1" in warned and "manifest.json" in warned
        with pytest.raises(ms.CorruptCheckpointError) as excinfo:
            ms.Checkpoints(run).load("step1")
        assert "manifest.json" in str(excinfo.value)
        assert list(ms.load(run)["w"]) == [0, 1, 2, 3]          # the run still resumes from what reads
        ck = ms.Checkpoints(run)
        ck.save({"w": np.zeros(2)}, step=2)                      # and a writer carries on
        ck.close()


def test_a_manifest_over_the_limit_is_refused_before_it_is_read(tmp_path):
    run = tmp_path / "run"
    _, newest = two_checkpoints(run)
    make_hostile_manifest(newest, "sparse-over-limit")
    _, warned = listed(run)
    assert f"{MAX_MANIFEST_BYTES:,}-byte limit" in warned


def test_a_checkpoint_that_is_a_link_is_not_followed(tmp_path):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    two_checkpoints(run)
    two_checkpoints(elsewhere)
    os.symlink(elsewhere / "step1", run / "evil")
    names, warned = listed(run)
    assert names == ["step0", "step1"] and "evil" in warned and "symbolic link" in warned
    with pytest.raises(ms.CorruptCheckpointError, match="symbolic link"):
        ms.Checkpoints(run).load("evil")


def test_a_shard_that_is_a_link_is_refused_by_load_verify_and_export(tmp_path):
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    two_checkpoints(run)
    two_checkpoints(elsewhere)
    shard = run / "step1" / SHARD
    shard.unlink()
    os.symlink(elsewhere / "step1" / SHARD, shard)   # identical bytes: only the link is wrong
    with pytest.raises(ms.CorruptCheckpointError, match="symbolic link") as excinfo:
        ms.load(run / "step1")
    assert excinfo.value.path == str(shard)
    with pytest.raises(ms.CorruptCheckpointError, match="symbolic link"):
        ms.Checkpoints(run).export(tmp_path / "out.safetensors", which=1)
    result = invoke("verify", run / "step1", "--json")
    assert result.code == 1
    assert result.json()["results"][0]["findings"][0]["file"] == str(shard)


def bound_run(run):
    ck = ms.Checkpoints(run)
    ck.bind(save=lambda path: open(os.path.join(path, "weights.txt"), "w").write("mine\n"))
    info = ck.save(step=0)
    ck.close()
    return info


def test_files_dir_that_is_a_link_out_is_refused_for_bound_load_fork_and_verify(tmp_path):
    run = tmp_path / "run"
    info = bound_run(run)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "weights.txt").write_text("mine\n")   # same bytes, so only the link gives it away
    secret = outside / "secret.txt"
    secret.write_text("not the run's\n")
    files = os.path.join(info.path, "files")
    shutil.rmtree(files)
    os.symlink(outside, files)
    seen = []
    ck = ms.Checkpoints(run)
    ck.bind(load=seen.append)
    for verify in (True, False):
        with pytest.raises(ms.CorruptCheckpointError, match="symbolic link"):
            ck.load(0, verify=verify)
    assert seen == []                                  # the bound load never got the outside path
    with pytest.raises(ms.CorruptCheckpointError, match="symbolic link"):
        ck.fork(tmp_path / "forked", which=0)
    assert os.stat(secret).st_nlink == 1 and os.stat(outside / "weights.txt").st_nlink == 1
    result = invoke("verify", run)
    assert result.code == 1 and "symbolic link" in result.out


def test_a_link_deeper_in_files_is_refused(tmp_path):
    run = tmp_path / "run"
    info = bound_run(run)
    (tmp_path / "secret.txt").write_text("outside\n")
    os.mkdir(os.path.join(info.path, "files", "sub"))
    os.symlink(tmp_path / "secret.txt", os.path.join(info.path, "files", "sub", "link.txt"))
    ck = ms.Checkpoints(run)
    ck.bind(load=lambda path: path)
    with pytest.raises(ms.CorruptCheckpointError, match="link.txt: is a symbolic link"):
        ck.load(0)
    with pytest.raises(ms.CorruptCheckpointError, match="symbolic link"):
        ck.fork(tmp_path / "forked", which=0)


@pytest.mark.parametrize("kind", ["link-to-dev-zero", "fifo", "too-big"])
def test_a_hostile_run_file_is_refused_without_hanging(tmp_path, kind):
    run = tmp_path / "run"
    two_checkpoints(run)
    run_file = run / RUN_FILE
    run_file.unlink()
    if kind == "link-to-dev-zero":
        os.symlink("/dev/zero", run_file)
    elif kind == "fifo":
        os.mkfifo(run_file)
    else:
        run_file.write_bytes(b" " * (MAX_RUN_FILE + 1))
    with no_hang():
        ck = ms.Checkpoints(run)
        with pytest.raises(ms.CorruptCheckpointError) as excinfo:
            ck.save({"w": np.zeros(1)}, step=5)
        assert RUN_FILE in str(excinfo.value)
        ck.close()
        assert [i.step for i in ms.Checkpoints(run).list()] == [0, 1]
        assert invoke("ls", run).code in (0, 1)                # the CLI does not hang either
