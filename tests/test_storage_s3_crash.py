"""Saves to S3 killed at random points never leave a listed partial checkpoint.

A child process saves checkpoints (and a single file) to a bucket on the loopback moto
server in a loop, reporting each commit on stdout; the parent SIGKILLs it at a random
moment (each checkpoint is also replaced once: saved again under its name).  Afterwards every listed checkpoint loads with every checksum verified and the
right contents, none the child saw committed is missing unless retention dropped it,
the single file is either absent or whole, and the next writer leaves no leftovers.
A bounded sample runs by default; MODELSAFE_SOAK=1 runs many more kills.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import modelsafe as ms
from modelsafe.storage.commit import DELETING_MARK, LOCK_NAME, MANIFEST, RUN_FILE, STAGING_MARK
from modelsafe.storage.remote import filesystem

SAMPLE_KILLS, SOAK_KILLS = 4, 40
KEEP_LAST = 2

CHILD = r"""
import json, sys
import numpy as np
import modelsafe as ms

run, file_url, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
ck = ms.Checkpoints(run, keep_last=2, storage_options=options)
latest = ck.latest()
step = latest.step + 1 if latest else 0
print("ready", flush=True)
while True:
    state = {"w": np.full(256 * 1024, step, np.float32), "small": [np.arange(32) + step for _ in range(30)], "step": step}
    ck.save(state, step=step)
    print(f"commit {step}", flush=True)
    ck.save({**state, "rev": 1}, step=step)  # a replace of the name just committed
    print(f"replace {step}", flush=True)
    ms.save({"w": np.full(256 * 1024, step, np.float32)}, file_url, storage_options=options)
    print(f"file {step}", flush=True)
    step += 1
"""


def run_and_kill(run: str, file_url: str, options: dict, delay: float) -> list[str]:
    child = subprocess.Popen([sys.executable, "-c", CHILD, run, file_url, json.dumps(options)],
                             stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert child.stdout.readline().strip() == "ready"
        os.set_blocking(child.stdout.fileno(), False)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
        return (child.stdout.read() or "").split()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


def check_run(run: str, options: dict, reported: list[int]) -> None:
    ck = ms.Checkpoints(run, storage_options=options)
    infos = ck.list()
    for info in infos:  # every listed checkpoint is whole and right
        assert ms.load(info.path, storage_options=options)["step"] == info.step
        assert np.array_equal(ck.load(info.step)["w"], np.full(256 * 1024, info.step, np.float32))
    if reported:  # the last reported commit is kept: at most one newer one was committed after it
        assert max(reported) in {i.step for i in infos}


def check_file(file_url: str, options: dict) -> None:
    try:
        loaded = ms.load(file_url, storage_options=options)  # checksums verified
    except ms.CheckpointNotFoundError:
        return  # killed before the first upload completed
    assert np.all(loaded["w"] == loaded["w"][0])


def check_clean_after_next_writer(run: str, options: dict) -> None:
    ck = ms.Checkpoints(run, keep_last=KEEP_LAST, storage_options=options)
    latest = ck.latest()
    step = latest.step + 1 if latest else 0
    ck.save({"w": np.full(256 * 1024, step, np.float32), "step": step}, step=step)
    names = {i.name for i in ck.list()}
    ck.close()
    fs, key = filesystem(run, options)
    fs.invalidate_cache()
    stored = [item[len(key.rstrip("/")) + 1:] for item in fs.find(key)]
    assert not [s for s in stored if STAGING_MARK in s or DELETING_MARK in s]
    for entry in stored:
        top = entry.split("/")[0]
        assert top in (RUN_FILE, LOCK_NAME) or top in names, entry
    assert all(f"{name}/{MANIFEST}" in stored for name in names)


def test_saves_to_s3_killed_at_random_points(s3_bucket, soak):
    base, options = s3_bucket
    run, file_url = f"{base}/run", f"{base}/single.safetensors"
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    for round_ in range(SOAK_KILLS if soak else SAMPLE_KILLS):
        delay = rng.uniform(0.05, 2.5)
        words = run_and_kill(run, file_url, options, delay)
        reported = [int(words[i + 1]) for i, w in enumerate(words) if w == "commit"]
        check_run(run, options, reported)
        check_file(file_url, options)
        if round_ % 2:  # every other round, the next writer is the checker (else the next child)
            check_clean_after_next_writer(run, options)
    check_clean_after_next_writer(run, options)


@pytest.mark.parametrize("when", ["payload", "manifest"])
def test_a_killed_upload_leaves_no_listed_checkpoint(s3_bucket, monkeypatch, when):
    """Deterministic kill points: right after the payloads went up, and just before the manifest."""
    from modelsafe.storage.remote_run import RemoteRunStorage

    base, options = s3_bucket
    ck = ms.Checkpoints(f"{base}/run", storage_options=options)
    ck.save({"step": 0, "w": np.zeros(8)}, step=0)
    real = RemoteRunStorage._upload

    def upload(self, local, key):
        if when == "payload" and not key.endswith(MANIFEST):
            real(self, local, key)
            raise KeyboardInterrupt("killed after a payload")
        if when == "manifest" and key.endswith(MANIFEST):
            raise KeyboardInterrupt("killed before the manifest")
        real(self, local, key)

    monkeypatch.setattr(RemoteRunStorage, "_upload", upload)
    with pytest.raises(KeyboardInterrupt):
        ck.save({"step": 1, "w": np.ones(8)}, step=1)
    ck.close()  # a killed writer's lease is gone (a dead process on this host, or expired)
    monkeypatch.setattr(RemoteRunStorage, "_upload", real)
    assert [i.step for i in ms.Checkpoints(f"{base}/run", storage_options=options).list()] == [0]
    check_clean_after_next_writer(f"{base}/run", options)


# -- replacing a committed name: killed at every step ----------------------------------------------------

MUTATIONS = ("put_file", "pipe_file", "cp_file", "rm_file", "rm")


class Killed(BaseException):
    """Stands for the writer dying (a BaseException: nothing may catch it on the way out)."""


def kill_at(monkeypatch, fs, step: int) -> list[str]:
    """Make the ``step``-th mutating request of ``fs`` (0-based) raise Killed; returns the log of requests."""
    log: list[str] = []
    for method in MUTATIONS:
        real = getattr(fs, method)

        def wrapped(*args, _real=real, _method=method, **kwargs):
            if len(log) == step:
                raise Killed(f"killed at {_method}{args[:2]}")
            log.append(f"{_method} {args[:2]}")
            return _real(*args, **kwargs)

        monkeypatch.setattr(fs, method, wrapped)
    return log


def stage_files(storage, files: dict[str, bytes]) -> str:
    staging = storage.stage("x")
    for rel, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(staging, rel)), exist_ok=True)
        with open(os.path.join(staging, rel), "wb") as f:
            f.write(data)
    return staging


OLD = {"a.bin": b"old-a" * 100, "files/b.txt": b"old-b", MANIFEST: b'{"v": "old"}'}
NEW = {"files/b.txt": b"new-b" * 50, "c.bin": b"new-c", MANIFEST: b'{"v": "new"}'}


def stored(storage, name: str) -> dict[str, bytes]:
    """The objects under a checkpoint as a reader finds them (a staged replacement while mid-swap)."""
    where = storage.checkpoint_path(name)
    fs, key = filesystem(where, storage.storage_options)
    fs.invalidate_cache()
    return {item[len(key) + 1:]: fs.cat_file(item) for item in fs.find(key)}


@pytest.fixture(params=["memory", "s3"])
def run_url(request) -> tuple[str, dict | None]:
    if request.param == "memory":
        import uuid

        return f"memory://replace-{uuid.uuid4().hex[:12]}/run", None
    base, options = request.getfixturevalue("s3_bucket")
    return f"{base}/run", options


def test_a_replace_killed_at_every_step_leaves_the_old_or_the_new_checkpoint(run_url, monkeypatch):
    """Kill a replace at each of its requests in turn: readers always find the old or the new
    checkpoint whole; the next writer leaves exactly one of them, and no staging objects."""
    from modelsafe.storage.remote_run import RemoteRunStorage

    url, options = run_url
    outcomes = []
    for step in range(100):
        run = f"{url}{step}"
        storage = RemoteRunStorage(run, options)
        storage.lock()
        storage.commit(stage_files(storage, OLD), "last")
        log = kill_at(monkeypatch, storage.fs, step)
        try:
            storage.commit(stage_files(storage, NEW), "last")
            finished = True
        except Killed:
            finished = False
        monkeypatch.undo()
        assert stored(storage, "last") in (OLD, NEW), (step, log)  # a reader, before anyone cleans up
        staged_whole = any(f"{MANIFEST}" in line and STAGING_MARK in line and "put_file" in line for line in log)
        storage.unlock()
        nxt = RemoteRunStorage(run, options)
        nxt.lock()
        nxt.clean_leftovers()
        after = stored(nxt, "last")
        assert after == (NEW if finished or staged_whole else OLD), (step, log)
        assert nxt.entries() == ["last"] and nxt.read_manifest("last") == after[MANIFEST]
        fs, key = filesystem(run, options)
        fs.invalidate_cache()
        leftovers = [k for k in fs.find(key) if STAGING_MARK in k or DELETING_MARK in k]
        assert leftovers == [], (step, log)
        nxt.unlock()
        outcomes.append(after[MANIFEST])
        if finished:
            break
    assert finished and step > 8  # every request of the replace was a kill point
    assert {b'{"v": "old"}', b'{"v": "new"}'} <= set(outcomes)


def test_a_replace_that_fails_midway_is_finished_by_the_same_writer(run_url, monkeypatch):
    """A replace raising after its staged copy is complete (a lost connection) is rolled forward
    by this writer's next commit of the name; a delete of the name does not bring it back."""
    from modelsafe.storage.remote_run import RemoteRunStorage

    url, options = run_url
    storage = RemoteRunStorage(url, options)
    storage.lock()
    storage.commit(stage_files(storage, OLD), "last")

    def broken(*args, **kwargs):
        raise ConnectionError("lost")

    monkeypatch.setattr(storage.fs, "cp_file", broken)
    with pytest.raises(ms.ModelsafeError, match="ConnectionError: lost"):
        storage.commit(stage_files(storage, NEW), "last")
    monkeypatch.undo()
    assert stored(storage, "last") == NEW and storage.entries() == ["last"]  # readers take the staged copy
    newer = {**NEW, MANIFEST: b'{"v": "newer"}'}
    storage.commit(stage_files(storage, newer), "last")
    assert stored(storage, "last") == newer
    storage.delete("last")
    storage.clean_leftovers()
    assert storage.entries() == [] and storage.read_manifest("last") is None
    storage.unlock()


def test_checkpoints_replace_a_name_on_s3_killed_at_every_step(s3_bucket, monkeypatch):
    """Through ms.Checkpoints: re-saving a step under its name, killed at each request, loads
    (checksums verified) as the old or the new state, before and after the next writer."""
    base, options = s3_bucket
    for step in range(100):
        run = f"{base}/run{step}"
        ck = ms.Checkpoints(run, storage_options=options)
        ck.save({"w": np.zeros(1000, np.float32), "rev": 0}, step=1)
        kill_at(monkeypatch, ck._storage.fs, step)
        try:
            ck.save({"w": np.ones(1000, np.float32), "rev": 1}, step=1)
            finished = True
        except Killed:
            finished = False
        monkeypatch.undo()
        ck.close()
        for _ in range(2):  # a reader; then the next writer cleans up and the reader looks again
            got = ms.load(f"{run}@step1", storage_options=options)
            assert np.array_equal(got["w"], np.full(1000, got["rev"], np.float32))
            assert [i.name for i in ms.Checkpoints(run, storage_options=options).list()] == ["step1"]
            writer = ms.Checkpoints(run, storage_options=options)
            writer._become_writer()
            writer.close()
        if finished:
            assert got["rev"] == 1
            break
    assert finished and step > 5
