"""One conformance suite for every storage backend: a local directory, memory:// and s3://
(a moto server on loopback, started by the ``s3_endpoint`` fixture in conftest.py).

Each test runs against all three through the public API (ms.save/load/open/load_into,
ms.Checkpoints, the CLI) and, for the run storage, through the RunStorage interface the
checkpoint manager uses (storage/commit.py and storage/remote_run.py).
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass

import numpy as np
import pytest
from click.testing import CliRunner

import modelsafe as ms
from modelsafe.cli import cli
from modelsafe.storage.commit import DELETING_MARK, MANIFEST, STAGING_MARK, LocalRunStorage
from modelsafe.storage.remote import filesystem
from modelsafe.storage.remote_run import RemoteRunStorage

BACKENDS = ["local", "memory", "s3"]


@dataclass
class Where:
    """A place to save to: ``base`` (a directory or URL prefix) and the storage_options it needs."""

    kind: str
    base: str
    options: dict | None
    env: dict

    def url(self, *parts: str) -> str:
        return "/".join([self.base, *parts]) if self.kind != "local" else os.path.join(self.base, *parts)

    def files(self, *parts: str) -> list[str]:
        """Every stored file under ``parts``, relative to it (the raw view: hidden entries included)."""
        root = self.url(*parts)
        if self.kind == "local":
            return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)
        fs, key = filesystem(root, self.options)
        fs.invalidate_cache()
        key = key.rstrip("/")
        return sorted(item[len(key) + 1:] for item in fs.find(key))

    def files_bytes(self, *parts: str) -> bytes:
        fs, key = filesystem(self.url(*parts), self.options)
        fs.invalidate_cache()
        return fs.cat_file(key)

    def storage(self, *parts: str):
        if self.kind == "local":
            return LocalRunStorage(self.url(*parts))
        return RemoteRunStorage(self.url(*parts), self.options)

    def checkpoints(self, *parts: str, **settings) -> ms.Checkpoints:
        return ms.Checkpoints(self.url(*parts), storage_options=self.options, **settings)


@pytest.fixture(params=BACKENDS)
def where(request, tmp_path) -> Where:
    return _where(request.param, request, tmp_path)


@pytest.fixture(params=["memory", "s3"])
def remote(request, tmp_path) -> Where:
    return _where(request.param, request, tmp_path)


def _where(kind: str, request, tmp_path) -> Where:
    if kind == "local":
        return Where(kind, str(tmp_path / "store"), None, {})
    if kind == "memory":
        base = f"memory://conformance-{uuid.uuid4().hex[:12]}"
        fs, key = filesystem(base)
        request.addfinalizer(lambda: fs.rm(key, recursive=True) if fs.exists(key) else None)
        return Where(kind, base, None, {})
    base, options = request.getfixturevalue("s3_bucket")
    env = {"AWS_ENDPOINT_URL": options["endpoint_url"], "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    return Where(kind, base, options, env)


def state(step: int) -> dict:
    return {"model": {"w": np.full((4, 3), step, np.float32), "b": np.arange(3, dtype=np.int64) + step},
            "step": step, "note": "x"}


# -- single files ------------------------------------------------------------------------------

def test_a_file_saves_loads_and_opens(where):
    url = where.url("models", "m.safetensors")
    if where.kind == "local":
        os.makedirs(os.path.dirname(url))
    tree = {"a": np.arange(10.0), "b": np.ones((3, 4), np.float32), "t": (1, 2.5), "n": None}
    ms.save(tree, url, metadata={"who": "me"}, storage_options=where.options)
    back = ms.load(url, storage_options=where.options)
    assert np.array_equal(back["a"], tree["a"]) and np.array_equal(back["b"], tree["b"])
    assert back["t"] == (1, 2.5) and back["n"] is None
    with ms.open(url, storage_options=where.options) as reader:
        assert reader.keys() == ["a", "b"] and reader.metadata == {"who": "me"}
        assert np.array_equal(reader["b"], tree["b"]) and np.array_equal(reader.get_slice("a")[2:4], [2.0, 3.0])
    ms.save({"a": np.zeros(1)}, url, storage_options=where.options)  # a second save replaces the first
    assert list(ms.load(url, storage_options=where.options)) == ["a"]
    assert where.files("models") == ["m.safetensors"]


def test_load_into_reads_a_url(where):
    url = where.url("sd.safetensors")
    if where.kind == "local":
        os.makedirs(where.base)
    ms.save({"w": np.arange(6.0)}, url, storage_options=where.options)
    target = {"w": np.zeros(6)}
    report = ms.load_into(target, url, storage_options=where.options)
    assert report.loaded == ["w"] and np.array_equal(target["w"], np.arange(6.0))


def test_a_missing_object_is_checkpoint_not_found(where):
    with pytest.raises(ms.CheckpointNotFoundError):
        ms.load(where.url("nothing-here.safetensors"), storage_options=where.options)


# -- the run storage interface ----------------------------------------------------------------------

def test_run_storage_writes_reads_lists_and_deletes(where):
    storage = where.storage("run")
    storage.lock()
    assert storage.entries() == [] and storage.read_manifest("a") is None
    staging = storage.stage("a")
    with open(os.path.join(staging, "payload.bin"), "wb") as f:
        f.write(b"x" * 1000)
    assert storage.entries() == []  # staged is not committed
    with open(os.path.join(staging, MANIFEST), "wb") as f:
        f.write(b'{"m": 1}')
    storage.commit(staging, "a")
    assert storage.entries() == ["a"] and storage.exists("a")
    assert storage.read_manifest("a") == b'{"m": 1}' and storage.manifest_signature("a") is not None
    storage.write_run_file(b'{"run": 1}')
    assert storage.read_run_file() == b'{"run": 1}'
    storage.delete("a")
    assert storage.entries() == [] and storage.read_manifest("a") is None
    assert not [f for f in where.files("run") if f.startswith("a/")]
    storage.unlock()


def _crash_midway(where: Where, run: str, monkeypatch) -> None:
    """Leave what a writer killed in the middle of committing checkpoint "step9" leaves."""
    ck = where.checkpoints(run)
    if where.kind == "local":  # killed while writing into its staging directory
        ck._storage.lock()
        staging = ck._storage.stage("step9")
        with open(os.path.join(staging, "state-00001-of-00001.safetensors"), "wb") as f:
            f.write(b"partial")
        ck._storage.unlock()  # the kernel drops a dead writer's lock
        return
    real = RemoteRunStorage._upload

    def upload(self, local, key):  # killed after the payloads, before the manifest (the commit)
        if key.endswith("/" + MANIFEST):
            raise KeyboardInterrupt("killed")
        real(self, local, key)

    monkeypatch.setattr(RemoteRunStorage, "_upload", upload)
    with pytest.raises(KeyboardInterrupt):
        ck.save(state(9), step=9)
    monkeypatch.setattr(RemoteRunStorage, "_upload", real)


def test_a_save_killed_midway_is_invisible_and_the_next_writer_cleans_it(where, monkeypatch):
    ck = where.checkpoints("run")
    ck.save(state(1), step=1)
    ck.close()
    _crash_midway(where, "run", monkeypatch)
    assert any("step9" in f for f in where.files("run"))  # the leftovers are there ...
    reader = where.checkpoints("run")
    assert [c.name for c in reader.list()] == ["step1"]  # ... and nobody lists them
    assert ms.load(where.url("run"), storage_options=where.options)["step"] == 1
    with pytest.raises(ms.CheckpointNotFoundError):
        ms.load(where.url("run") + "@step9", storage_options=where.options)
    writer = where.checkpoints("run")
    writer.save(state(2), step=2)  # the next writer cleans up first
    leftovers = [f for f in where.files("run") if "step9" in f or STAGING_MARK in f or DELETING_MARK in f]
    assert leftovers == []
    assert [c.name for c in writer.list()] == ["step1", "step2"]
    writer.close()


def test_retention_deletes_on_every_backend(where):
    ck = where.checkpoints("run", keep_last=2, keep_best=1, monitor="loss")
    losses = [0.5, 0.1, 0.7, 0.9, 0.8]
    for step, loss in enumerate(losses):
        ck.save(state(step), step=step, metrics={"loss": loss})
    assert [c.name for c in ck.list()] == ["step1", "step3", "step4"]
    stored = {f.split("/")[0] for f in where.files("run") if not f.startswith(".")}
    assert stored == {"step1", "step3", "step4"}  # the objects of pruned checkpoints are gone
    ck.close()


# -- Checkpoints end to end --------------------------------------------------------------------------

def test_checkpoints_end_to_end(where):
    ck = where.checkpoints("exp", keep_last=2, keep_best=1, monitor="val", mode="max", name="e{step:02d}-v{val:.2f}")
    for step, val in enumerate([0.2, 0.9, 0.4, 0.3]):
        ck.save(state(step), step=step, metrics={"val": val})
    ck.close()
    again = where.checkpoints("exp")  # a new process: the run remembers its settings
    assert (again.monitor, again.mode, again.keep_last) == ("val", "max", 2)
    assert again.best().name == "e01-v0.90" and again.latest().step == 3
    assert again.load("best")["step"] == 1 and again.load(2)["step"] == 2
    resumed = state(0)
    info = again.load_into(resumed)
    assert info.step == 3 and np.array_equal(resumed["model"]["w"], np.full((4, 3), 3, np.float32))
    run = where.url("exp")
    assert ms.load(run + "@best", storage_options=where.options)["step"] == 1
    with ms.open(run + "@latest", storage_options=where.options) as reader:
        assert np.array_equal(reader["model.b"], np.arange(3) + 3)
    again.close()


def test_bound_save_and_load_functions_work(where):
    ck = where.checkpoints("bound")

    def save(path, text):
        with open(os.path.join(path, "notes.txt"), "w") as f:
            f.write(text)

    def load(path):
        with open(os.path.join(path, "notes.txt")) as f:
            return f.read()

    ck.bind(save=save, load=load, text="hello")
    ck.save(step=1)
    assert ck.load(1) == "hello"
    assert "step1/files/notes.txt" in where.files("bound")
    ck.close()


def test_export_and_fork_of_a_remote_run(where, tmp_path):
    ck = where.checkpoints("src", monitor="loss")
    for step, loss in enumerate([0.3, 0.1]):
        ck.save(state(step), step=step, metrics={"loss": loss})
    exported = tmp_path / "model.safetensors"
    ck.export(exported)
    assert np.array_equal(ms.load(exported)["w"], np.full((4, 3), 1, np.float32))
    fork = ck.fork(where.url("dst"))
    assert [c.step for c in fork.list()] == [1] and fork.load()["step"] == 1
    fork.close()
    ck.close()


# -- reading one tensor: range requests, not the whole object -------------------------------------------

def test_open_reads_one_tensor_with_range_requests(remote):
    url = remote.url("big.safetensors")
    tensors = {f"t{i}": np.full(1 << 18, i, np.float32) for i in range(8)}  # 8 x 1 MiB
    ms.save(tensors, url, storage_options=remote.options)
    fs, _ = filesystem(url, remote.options)
    fetched = []
    real = fs.cat_file

    def counting(path, start=None, end=None, **kwargs):
        data = real(path, start=start, end=end, **kwargs)
        fetched.append(len(data))
        return data

    fs.cat_file = counting
    try:
        with ms.open(url, storage_options=remote.options) as reader:
            header = sum(fetched)
            assert np.array_equal(reader["t5"], tensors["t5"])
            assert np.array_equal(reader["t5"], tensors["t5"])  # a second read fetches nothing more
    finally:
        del fs.cat_file
    total = fs.size(url.split("://", 1)[1])
    assert sum(fetched) - header == 1 << 20  # exactly the tensor's bytes
    assert sum(fetched) < total / 6


# -- the command line on a URL ---------------------------------------------------------------------------

def test_cli_ls_show_verify_export_on_a_url(where, tmp_path):
    ck = where.checkpoints("cli", monitor="loss")
    for step, loss in enumerate([0.3, 0.1, 0.2]):
        ck.save(state(step), step=step, metrics={"loss": loss})
    ck.close()
    run = where.url("cli")
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(cli, list(args), env=where.env, catch_exceptions=False)

    listing = json.loads(invoke("ls", run, "--json").output)
    assert [c["name"] for c in listing["checkpoints"]] == ["step0", "step1", "step2"]
    shown = json.loads(invoke("show", run + "@best", "--json").output)
    assert {t["name"] for t in shown["tensors"]} >= {"model.w", "model.b"}
    result = invoke("verify", run)
    assert result.exit_code == 0, result.output
    out = tmp_path / "exported.safetensors"
    assert invoke("export", run, str(out)).exit_code == 0
    assert np.array_equal(ms.load(out)["w"], np.full((4, 3), 1, np.float32))


def test_cli_verify_names_the_corrupt_object_and_tensor(where):
    ck = where.checkpoints("bad")
    ck.save({"w": np.arange(1000, dtype=np.float32)}, step=0)
    ck.close()
    shard = where.url("bad", "step0", "state-00001-of-00001.safetensors")
    if where.kind == "local":
        with open(shard, "r+b") as f:
            f.seek(-4, 2)
            f.write(b"\x00\x00\x80\x7f")
    else:
        fs, key = filesystem(shard, where.options)
        data = bytearray(fs.cat_file(key))
        data[-4:] = b"\x00\x00\x80\x7f"
        fs.pipe_file(key, bytes(data))
    result = CliRunner().invoke(cli, ["verify", where.url("bad"), "--json"], env=where.env)
    assert result.exit_code == 1
    findings = json.loads(result.stdout)["results"][0]["findings"]
    assert findings[0]["tensor"] == "w" and findings[0]["file"].startswith(where.url("bad"))
    with pytest.raises(ms.CorruptCheckpointError, match="'w'"):
        ms.load(where.url("bad"), storage_options=where.options)


def test_cli_diff_prune_plot_fork_on_a_url(where, tmp_path):
    ck = where.checkpoints("more", monitor="loss")
    for step, loss in enumerate([0.5, 0.1, 0.7, 0.3]):
        ck.save(state(step), step=step, metrics={"loss": loss})
    ck.close()
    run = where.url("more")
    runner = CliRunner()

    def invoke(*args):
        result = runner.invoke(cli, list(args), env=where.env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.stdout

    changed = json.loads(invoke("diff", run + "@0", run + "@best", "--json"))
    assert "model.w" in json.dumps(changed)
    invoke("prune", run, "--keep-last", "2")
    assert [c.step for c in where.checkpoints("more").list()] == [2, 3]
    invoke("plot", run, "--metric", "loss", "-o", str(tmp_path / "curve.png"))
    assert (tmp_path / "curve.png").stat().st_size > 0
    invoke("fork", run, where.url("forked"))
    assert [c.step for c in where.checkpoints("forked").list()] == [3]


def test_async_saves_commit_in_the_background(where):
    ck = where.checkpoints("async", keep_last=2, async_save=True)
    tensor = np.zeros(1000, np.float32)
    for step in range(3):
        tensor[:] = step
        ck.save({"t": tensor}, step=step)
    tensor[:] = 99  # changes after save() returned never reach the checkpoint
    ck.wait()
    assert [c.step for c in ck.list()] == [1, 2]
    assert np.array_equal(ck.load()["t"], np.full(1000, 2, np.float32))
    ck.close()


def test_an_object_with_at_in_its_name_is_taken_literally(remote):
    url = remote.url("model@v2.safetensors")
    ms.save({"w": np.arange(2)}, url, storage_options=remote.options)
    assert np.array_equal(ms.load(url, storage_options=remote.options)["w"], np.arange(2))


# -- one writer per run ------------------------------------------------------------------------------------

def test_a_second_writer_is_refused_until_the_first_closes(where):
    first = where.checkpoints("solo")
    first.save(state(0), step=0)
    second = where.checkpoints("solo")
    with pytest.raises(ms.RunLockedError, match=f"pid {os.getpid()}"):
        second.save(state(1), step=1)
    assert [c.step for c in second.list()] == [0]  # reading needs no lock
    first.close()
    second.save(state(1), step=1)
    assert [c.step for c in second.list()] == [0, 1]
    second.close()


def _lease(remote: Where, run: str, **fields) -> None:
    body = {"owner": "other", "host": "another-host", "pid": 4242, "time": __import__("time").time(), **fields}
    fs, key = filesystem(remote.url(run, ".modelsafe.lock"), remote.options)
    fs.pipe_file(key, json.dumps(body).encode())


def test_a_live_lease_of_another_host_refuses_and_a_stale_one_is_taken_over(remote):
    _lease(remote, "run")
    with pytest.raises(ms.RunLockedError, match="pid 4242 on another-host"):
        remote.storage("run").lock()
    _lease(remote, "run", time=0.0)  # not renewed for ages: its writer is gone
    storage = remote.storage("run")
    storage.lock()
    storage.commit(_staged(storage, b"{}"), "a")
    assert storage.entries() == ["a"]
    storage.unlock()
    assert ".modelsafe.lock" not in remote.files("run")  # released


def test_a_damaged_lease_goes_stale_like_any_other(remote):
    fs, key = filesystem(remote.url("run", ".modelsafe.lock"), remote.options)
    fs.pipe_file(key, b"\x00not json")
    with pytest.raises(ms.RunLockedError, match="unknown"):
        remote.storage("run").lock()
    storage = remote.storage("run")
    storage.lease_seconds = 0.0  # as if its age were past the timeout
    storage.lock()
    storage.unlock()


def test_a_writer_whose_lease_was_taken_over_commits_nothing(remote):
    storage = remote.storage("run")
    storage.lock()
    staging = _staged(storage, b"{}")
    _lease(remote, "run")  # another writer took the run over (this one hung past the timeout)
    with pytest.raises(ms.RunLockedError, match="lost the run's lease.*another-host"):
        storage.commit(staging, "a")
    assert storage.entries() == [] and storage.read_manifest("a") is None
    storage.unlock()
    assert json.loads(remote.files_bytes("run", ".modelsafe.lock"))["owner"] == "other"  # not ours to remove


def test_the_lease_is_renewed_while_held(remote):
    import time

    storage = remote.storage("run")
    storage.lease_seconds = 4.0  # renewed every second; lost only after 4 s of failed renewals (a busy server)
    storage.lock()
    first = json.loads(remote.files_bytes("run", ".modelsafe.lock"))["time"]
    deadline = time.monotonic() + 120  # a bound for a hung heartbeat, not a timing claim
    while json.loads(remote.files_bytes("run", ".modelsafe.lock"))["time"] == first and time.monotonic() < deadline:
        time.sleep(0.1)
    assert json.loads(remote.files_bytes("run", ".modelsafe.lock"))["time"] > first
    storage.unlock()


def test_a_takeover_racing_another_loses_on_the_etag_on_s3(s3_bucket, monkeypatch):
    """Two writers both read a stale lease; the first takes it over; the second's write, made
    on the ETag it read (If-Match), is refused by the store, so it does not take the run too.
    (Stepped by hand: moto checks conditions without a lock, so a threaded race against it
    tests moto; S3 itself applies them atomically.)"""
    from modelsafe.storage import lease as remote_lease

    base, options = s3_bucket
    where = Where("s3", base, options, {})
    _lease(where, "run", time=0.0)
    fs, key = filesystem(where.url("run", ".modelsafe.lock"), options)
    seen = remote_lease._read_lease(fs, key)  # what the second writer read, before the first took over
    first = where.storage("run")
    first.lock()
    monkeypatch.setattr(remote_lease, "_read_lease", lambda fs, key: seen)
    with pytest.raises(ms.RunLockedError):
        where.storage("run").lock()
    monkeypatch.undo()
    first.commit(_staged(first, b"{}"), "a")  # the first still holds it
    first.unlock()


def test_a_lease_is_created_once_on_s3(s3_bucket):
    """The create is conditional (If-None-Match: *): an existing lease is never overwritten by it."""
    from modelsafe.storage import lease as remote_lease

    base, options = s3_bucket
    fs, key = filesystem(f"{base}/run/.modelsafe.lock", options)
    remote_lease._create(fs, key, b'{"owner": "a"}')
    with pytest.raises(FileExistsError):
        remote_lease._create(fs, key, b'{"owner": "b"}')
    assert fs.cat_file(key) == b'{"owner": "a"}'


def _staged(storage, manifest: bytes) -> str:
    staging = storage.stage("a")
    with open(os.path.join(staging, MANIFEST), "wb") as f:
        f.write(manifest)
    return staging


# -- deduplication on object stores: unchanged shards are copied server-side -----------------------------------

def test_an_unchanged_shard_is_copied_not_uploaded(remote, monkeypatch):
    from modelsafe.storage.remote_run import RemoteRunStorage

    frozen = np.arange(1 << 20, dtype=np.float32)  # 4 MiB: a shard of its own
    ck = remote.checkpoints("dedup", keep_last=1)
    ck.save({"base": frozen, "head": np.zeros(8)}, step=0)
    uploaded = []
    real = RemoteRunStorage._upload

    def upload(self, local, key):
        uploaded.append(key.rpartition("/")[2])
        real(self, local, key)

    monkeypatch.setattr(RemoteRunStorage, "_upload", upload)
    ck.save({"base": frozen, "head": np.ones(8)}, step=1)  # base unchanged, head changed
    assert len(uploaded) == 2 and MANIFEST in uploaded  # the head's shard and the manifest; base was copied
    uploaded.clear()
    ck.save({"base": frozen + 1, "head": np.full(8, 2.0)}, step=2)  # both changed: both uploaded
    assert len(uploaded) == 3
    monkeypatch.undo()
    assert [c.step for c in ck.list()] == [2]  # step0 and step1 pruned: each checkpoint stands alone
    fresh = remote.checkpoints("dedup")
    ck.close()
    assert np.array_equal(fresh.load(2)["base"], frozen + 1)
    for step, base in ((3, frozen + 1), (4, frozen + 1)):  # a new writer reads the identities from the manifests
        fresh.save({"base": base, "head": np.full(8, step)}, step=step)
    assert np.array_equal(fresh.load(4)["base"], frozen + 1) and np.array_equal(fresh.load(4)["head"], np.full(8, 4))
    fresh.close()


def test_a_shard_whose_stored_copy_differs_is_uploaded(remote):
    """A stored shard that no longer matches its manifest's identity (tampered, replaced) is never copied."""
    frozen = np.arange(1 << 20, dtype=np.float32)
    ck = remote.checkpoints("tamper")
    ck.save({"base": frozen, "head": np.zeros(8)}, step=0)
    shard = next(f for f in remote.files("tamper") if f.startswith("step0/state-") and "00001-" in f)
    fs, key = filesystem(remote.url("tamper", shard), remote.options)
    data = bytearray(fs.cat_file(key))
    data[20] ^= 1  # inside the header
    fs.pipe_file(key, bytes(data))
    ck.save({"base": frozen, "head": np.ones(8)}, step=1)
    assert np.array_equal(ck.load(1)["base"], frozen)  # verified: uploaded, not copied
    ck.close()
