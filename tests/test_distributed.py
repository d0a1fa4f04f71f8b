"""ms.distributed: sharded FSDP2 / DTensor state through DCP, in modelsafe's format.

Three worker launches (tests/dist_scripts/fsdp_worker.py) make and check the
checkpoints, several checks each: torchrun with 2 ranks saves (sync and async); one
process loads both (2 -> 1) and saves its own; torchrun with 2 ranks loads that
(1 -> 2) and the 2-rank one (2 -> 2).  The rest reads the results in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

import modelsafe as ms  # noqa: E402
from modelsafe.distributed.layout import parse_layout  # noqa: E402

WORKER = os.path.join(os.path.dirname(__file__), "dist_scripts", "fsdp_worker.py")
SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")
TIMEOUT = 300

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], *, ranks: int | None, cwd: str, env: dict | None = None) -> subprocess.CompletedProcess:
    if ranks is None:
        command = [sys.executable, WORKER, *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
                   "--master-port", str(_free_port()), WORKER, *args]
    # a session of its own, so a hung launch is ended with every worker it started
    with subprocess.Popen(command, cwd=cwd, env={**_env(), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            out, err = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            err += f"\n[killed after {TIMEOUT} s]"
    return subprocess.CompletedProcess(command, process.returncode, out, err)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, s3_endpoint):
    """Run the three launches once; each test checks the part it is about."""
    d = str(tmp_path_factory.mktemp("dist"))
    out = {"dir": d, **_s3_bucket_for_workers(s3_endpoint)}
    out["save2"] = _launch(["save", "c2", "ref2.safetensors", "--async", "a2", "ckrun", "run",
                           "ackrun", "arun", "s3", out["s3"]], ranks=2, cwd=d, env=out["s3_env"])
    if out["save2"].returncode == 0:
        out["single"] = _launch(["load", "c2", "ref2.safetensors", "a2", "ref2.safetensors",
                                 "+", "save", "c1", "ref1.safetensors"], ranks=None, cwd=d)
    if out.get("single") is not None and out["single"].returncode == 0:
        _damage(os.path.join(d, "c2"), os.path.join(d, "bad2"))
        out["load2"] = _launch(["load", "c1", "ref1.safetensors", "c2", "ref2.safetensors", "bad2", "damaged"],
                               ranks=2, cwd=d)
    return out


def _ok(result: subprocess.CompletedProcess | None, lines: list[str]) -> None:
    assert result is not None, "an earlier launch failed"
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    for line in lines:
        assert line in result.stdout


def test_two_ranks_save_sync_and_async(runs):
    _ok(runs["save2"], ["OK rank 0", "OK rank 1"])
    for name in ("c2", "a2"):
        files = sorted(os.listdir(os.path.join(runs["dir"], name)))
        assert files == ["manifest.json", "rank-00000.safetensors", "rank-00001.safetensors"]


def test_checkpoints_run_of_sharded_saves(runs):
    _ok(runs["save2"], ["OK rank 0", "OK rank 1"])  # the worker resumed from the latest on both ranks
    run = ms.Checkpoints(os.path.join(runs["dir"], "run"))
    assert [info.name for info in run.list()] == ["step1", "step2"]  # rank 0 pruned step0
    assert run.best().name == "step2"
    latest = ms.load(run.latest().path)
    assert latest["extra"]["epoch"] == 2
    assert ms.load(os.path.join(runs["dir"], "run") + "@best")["extra"]["epoch"] == 2  # addresses reach it too
    ref = ms.load(os.path.join(runs["dir"], "ref2.safetensors"))
    assert torch.equal(latest["model"]["0.weight"], ref["model.0.weight"])


def test_checkpoints_run_of_background_sharded_saves(runs):
    # the worker checked on both ranks: handles, in-place changes kept out, failures and refusals raised, resume
    _ok(runs["save2"], ["OK async run rank 0", "OK async run rank 1"])
    run = ms.Checkpoints(os.path.join(runs["dir"], "arun"))
    assert [(info.name, info.step) for info in run.list()] == [("step2", 2), ("step3", 3)]
    latest = ms.load(os.path.join(runs["dir"], "arun") + "@latest")
    assert latest["extra"]["epoch"] == 3 and latest["extra"]["table"].shape == (7, 5)
    assert not [n for n in os.listdir(os.path.join(runs["dir"], "arun")) if "tmp" in n]
    staged, direct = (parse_layout(json.load(open(os.path.join(p, "manifest.json")))["distributed"], p)
                      for p in (run.latest().path, os.path.join(runs["dir"], "c2")))
    assert staged.files == direct.files and staged.paths == direct.paths  # the CPU copy is laid out as the state
    assert {k: (t.dtype, t.shape, t.requires_grad) for k, t in staged.tensors.items()} == \
        {k: (t.dtype, t.shape, t.requires_grad) for k, t in direct.tensors.items()}
    fixed = ms.Checkpoints(os.path.join(runs["dir"], "arun-fixed"))
    assert [(info.name, info.step) for info in fixed.list()] == [("last", 0)]


def test_two_to_one_and_one_rank_save(runs):
    _ok(runs["single"], ["OK single"])  # the worker compares every tensor and value with the reference


def test_one_to_two_and_two_to_two_and_damaged(runs):
    _ok(runs.get("load2"), ["OK rank 0", "OK rank 1"])  # both ranks also saw the damaged copy refused


def _flat(tree, prefix=""):
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    if isinstance(tree, (list, tuple)) and not (isinstance(tree, tuple) and prefix.endswith("betas.")):
        return {k: v for i, value in enumerate(tree) for k, v in _flat(value, f"{prefix}{i}.").items()}
    return {prefix[:-1]: tree}


def test_open_and_load_give_whole_tensors(runs):
    _ok(runs["save2"], [])
    d = runs["dir"]
    ref = ms.load(os.path.join(d, "ref2.safetensors"))
    with ms.open(os.path.join(d, "c2")) as reader:
        keys = reader.keys()
        assert {k for k, v in ref.items() if isinstance(v, torch.Tensor)} == set(keys)
        for key in keys:
            assert torch.equal(reader[key], ref[key]), key
    state = ms.load(os.path.join(d, "c2"))
    assert set(state) == {"model", "optim", "extra"}
    assert state["optim"]["param_groups"][0]["betas"] == (0.9, 0.999)  # tuples stay tuples, through JSON
    flat = _flat(state)
    assert set(flat) == set(ref)
    for key, value in ref.items():
        assert torch.equal(flat[key], value) if isinstance(value, torch.Tensor) else flat[key] == value, key


def test_no_pickle_anywhere(runs):
    _ok(runs["save2"], [])
    from safetensors import safe_open

    c2 = os.path.join(runs["dir"], "c2")
    manifest = json.load(open(os.path.join(c2, "manifest.json")))
    layout = parse_layout(manifest["distributed"], c2)
    assert layout.world_size == 2 and layout.files == ("rank-00000.safetensors", "rank-00001.safetensors")
    assert layout.objects["extra.epoch"] == 3
    chunks = layout.tensors["extra.table"].chunks
    assert sorted(c.offsets for c in chunks) == [(0, 0), (4, 0)] and {c.file for c in chunks} == set(layout.files)
    for name in layout.files:  # each rank file is a plain safetensors file of its chunks
        with safe_open(os.path.join(c2, name), "pt") as f:
            assert any(key.startswith("extra.table@") for key in f.keys())


def _damage(checkpoint: str, bad: str) -> None:
    """A copy of ``checkpoint`` at ``bad`` with one bit of rank 1's last payload flipped."""
    shutil.copytree(checkpoint, bad)
    path = os.path.join(bad, "rank-00001.safetensors")
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0x10
    open(path, "wb").write(bytes(data))


def _corrupt_copy(runs, tmp_path) -> str:
    bad = str(tmp_path / "bad")
    _damage(os.path.join(runs["dir"], "c2"), bad)
    return bad


def test_corrupt_shard_names_rank_file_and_tensor(runs, tmp_path):
    _ok(runs["save2"], [])
    bad = _corrupt_copy(runs, tmp_path)
    with pytest.raises(ms.CorruptCheckpointError) as info:
        ms.load(bad)
    assert info.value.path.endswith("rank-00001.safetensors")
    damaged = info.value.key
    assert damaged in ms.load(os.path.join(runs["dir"], "c2"), verify=False) or "." in damaged
    assert "rank-00001.safetensors" in str(info.value) and repr(damaged) in str(info.value)
    # resuming from it fails the same way, before anything is used
    state = {"extra": {"table": torch.zeros(7, 5)}}
    with pytest.raises(ms.CorruptCheckpointError, match="rank-00001.safetensors"):
        ms.distributed.load_into(state, bad)
    verify = subprocess.run([sys.executable, "-m", "modelsafe", "verify", bad], env=_env(), capture_output=True,
                            text=True, timeout=TIMEOUT)
    assert verify.returncode == 1
    assert "rank-00001.safetensors" in verify.stdout + verify.stderr and damaged in verify.stdout + verify.stderr


def test_export_consolidates_the_model(runs, tmp_path):
    _ok(runs["save2"], [])
    out = str(tmp_path / "model.safetensors")
    result = subprocess.run([sys.executable, "-m", "modelsafe", "export", os.path.join(runs["dir"], "c2"), out],
                            env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr
    ref = ms.load(os.path.join(runs["dir"], "ref2.safetensors"))
    exported = ms.load(out)
    assert set(exported) == {k[len("model."):] for k in ref if k.startswith("model.")}
    for key, value in exported.items():
        assert torch.equal(value, ref[f"model.{key}"])


# -- one process: the commit and the checks on what a file says ---------------------------

def _small_state():
    torch.manual_seed(0)
    return {"model": {"w": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int16)}, "lr": 0.5, "note": "x"}


@pytest.fixture
def small(tmp_path):
    path = str(tmp_path / "ckpt")
    ms.distributed.save(_small_state(), path)
    return path


def test_one_process_round_trip_in_place(small):
    state = {"model": {"w": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.int16)}, "lr": 0.0, "note": ""}
    ms.distributed.load_into(state, small)
    expected = _small_state()
    assert torch.equal(state["model"]["w"], expected["model"]["w"]) and torch.equal(state["model"]["b"], expected["model"]["b"])
    assert state["lr"] == 0.5 and state["note"] == "x"


def test_failed_save_leaves_nothing(tmp_path):
    path = str(tmp_path / "ckpt")
    with pytest.raises(ms.ModelsafeError):
        ms.distributed.save({"w": torch.ones(2), "bad": {1, object()}}, path)
    assert os.listdir(tmp_path) in ([], [".modelsafe.lock"])
    ms.distributed.save({"w": torch.ones(2)}, path)  # the lock was released
    assert torch.equal(ms.load(path)["w"], torch.ones(2))


def test_async_save_waits_and_commits(tmp_path):
    path = str(tmp_path / "ckpt")
    handle = ms.distributed.save(_small_state(), path, async_save=True)
    handle.wait()
    assert torch.equal(ms.load(path)["model"]["w"], _small_state()["model"]["w"])


def _tamper(path, change):
    manifest_path = os.path.join(path, "manifest.json")
    manifest = json.load(open(manifest_path))
    change(manifest["distributed"])
    open(manifest_path, "w").write(json.dumps(manifest))


def _chunk(block):
    return block["tensors"]["model.w"]["chunks"][0]


@pytest.mark.parametrize("change, words", [
    (lambda b: _chunk(b).update(offsets=[1, 0]), "outside"),
    (lambda b: _chunk(b).update(sizes=[3, 5]), "outside"),
    (lambda b: b["tensors"]["model.w"].update(shape=[3, 5]), "elements"),
    (lambda b: b["tensors"]["model.w"].update(dtype="object"), "dtype"),
    (lambda b: _chunk(b).update(file="../../etc/passwd"), "rank file"),
    (lambda b: b.update(files=["rank-00000.safetensors", "x.safetensors"]), "rank"),
    (lambda b: _chunk(b).update(xxh3="not-a-checksum"), "checksum"),
    (lambda b: _chunk(b).update(xxh3="0" * 16), "disagree"),
    (lambda b: _chunk(b).update(key="model.b@0"), "int16"),
    (lambda b: b["tensors"]["model.w"]["chunks"].append(dict(_chunk(b))), "elements"),
    (lambda b: b.update(version=99), "version"),
    (lambda b: b["paths"].update({"model.w": ["model", "b"]}), "taken"),
    (lambda b: b["paths"].update({"nothing": ["x"]}), "not stored"),
])
def test_hostile_manifest_is_refused(small, change, words):
    _tamper(small, change)
    with pytest.raises(ms.CorruptCheckpointError, match=words):
        ms.open(small)
    with pytest.raises(ms.CorruptCheckpointError):
        ms.distributed.load_into({"model": {"w": torch.zeros(3, 4)}}, small)


def test_object_nodes_are_decoded_not_run(small):
    _tamper(small, lambda b: b["objects"].update(lr={"pickle": "lr"}))
    with pytest.raises(ms.ModelsafeError):
        ms.distributed.load_into({"lr": 0.0}, small)


def test_importing_modelsafe_distributed_imports_no_torch():
    code = "import sys, modelsafe; modelsafe.distributed.save; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], env=_env(), check=True, timeout=TIMEOUT)


def test_checkpoints_distributed_in_one_process(tmp_path):
    ck = ms.Checkpoints(str(tmp_path / "run"), keep_last=1)
    for step in range(2):
        info = ck.save(_small_state(), step=step, distributed=True)
        assert info.name == f"step{step}"
    assert [i.name for i in ck.list()] == ["step1"]
    assert torch.equal(ms.load(ck.latest().path)["model"]["w"], _small_state()["model"]["w"])
    with pytest.raises(ms.InvalidArgumentError, match="metadata"):
        ck.save(_small_state(), step=2, distributed=True, metadata={"a": "b"})
    fixed = ms.Checkpoints(str(tmp_path / "fixed"), name="last")
    fixed.save(_small_state(), step=0, distributed=True)
    with pytest.raises(ms.RunConflictError):  # the name is taken by step 0: refused before anything is written
        fixed.save({"other": torch.ones(1)}, step=1, distributed=True)
    assert [(i.name, i.step) for i in fixed.list()] == [("last", 0)]
    assert sorted(os.listdir(tmp_path / "fixed")) == [".modelsafe-run.json", ".modelsafe.lock", "last"]


# -- object stores: ms.distributed.save to s3:// (moto on loopback) ----------------------------------------

def _s3_bucket_for_workers(endpoint: str) -> dict:
    """A fresh bucket, and the AWS_* environment that points the launched workers at it."""
    import uuid

    import boto3

    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    name = f"dist-{uuid.uuid4().hex[:16]}"
    boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket=name)
    options = {"key": "testing", "secret": "testing", "endpoint_url": endpoint,
               "client_kwargs": {"region_name": "us-east-1"}}
    return {"s3": f"s3://{name}", "s3_env": env, "s3_options": options}


def test_two_ranks_save_to_s3_and_one_process_reads_it(runs):
    _ok(runs["save2"], ["OK rank 0", "OK rank 1"])
    url, options = runs["s3"], runs["s3_options"]
    assert _s3_files(f"{url}/c2", options) == ["manifest.json", "rank-00000.safetensors", "rank-00001.safetensors"]
    ref = ms.load(os.path.join(runs["dir"], "ref2.safetensors"))
    flat = _flat(ms.load(f"{url}/c2", storage_options=options))
    assert set(flat) == set(ref)
    for key, value in ref.items():
        assert torch.equal(flat[key], value) if isinstance(value, torch.Tensor) else flat[key] == value, key
    run = ms.Checkpoints(f"{url}/run", storage_options=options)
    assert [i.name for i in run.list()] == ["step1"]  # rank 0 committed both and pruned step0
    with ms.open(f"{url}/run@latest", storage_options=options) as reader:
        assert torch.equal(reader["model.0.weight"], ref["model.0.weight"])
    leftovers = [f for f in _s3_files(url, options) if ".modelsafe-tmp-" in f or ".modelsafe-del-" in f]
    assert leftovers == []
    assert not [f for f in _s3_files(url, options) if f.endswith(".modelsafe.lock")]  # the leases were released


def _s3_files(url: str, options: dict) -> list[str]:
    from modelsafe.storage.remote import filesystem

    fs, key = filesystem(url, options)
    fs.invalidate_cache()
    return sorted(item[len(key.rstrip("/")) + 1:] for item in fs.find(key))


def test_one_process_save_to_s3_reads_back(s3_bucket):
    base, options = s3_bucket
    url = f"{base}/run/ckpt"
    ms.distributed.save(_small_state(), url, storage_options=options)
    assert _s3_files(f"{base}/run", options) == ["ckpt/manifest.json", "ckpt/rank-00000.safetensors"]
    expected = _small_state()
    with ms.open(url, storage_options=options) as reader:
        assert torch.equal(reader["model.w"], expected["model"]["w"])
    back = ms.load(url, storage_options=options)
    assert torch.equal(back["model"]["b"], expected["model"]["b"]) and back["lr"] == 0.5 and back["note"] == "x"
    ms.distributed.save({"model": {"w": torch.ones(2)}}, url, storage_options=options)  # a replace
    assert torch.equal(ms.load(url, storage_options=options)["model"]["w"], torch.ones(2))
    assert _s3_files(f"{base}/run", options) == ["ckpt/manifest.json", "ckpt/rank-00000.safetensors"]


def test_a_failed_or_killed_save_to_s3_leaves_nothing_listed(s3_bucket, monkeypatch):
    from modelsafe.storage.remote_run import RemoteRunStorage

    base, options = s3_bucket
    run = f"{base}/run"
    with pytest.raises(ms.ModelsafeError):  # fails in the middle: what it uploaded is removed at once
        ms.distributed.save({"w": torch.ones(2), "bad": {1, object()}}, f"{run}/ckpt", storage_options=options)
    assert [f for f in _s3_files(run, options) if not f.startswith(".modelsafe.lock")] == []
    real = RemoteRunStorage._upload

    def upload(self, local, key):  # killed just before the manifest: nothing cleans up in this process
        if key.endswith("/manifest.json"):
            raise KeyboardInterrupt("killed")
        real(self, local, key)

    monkeypatch.setattr(RemoteRunStorage, "_upload", upload)
    monkeypatch.setattr(RemoteRunStorage, "abandon", lambda self, upload: None)
    with pytest.raises(BaseException, match="killed"):  # DCP wraps what a rank raised
        ms.distributed.save(_small_state(), f"{run}/ckpt", storage_options=options)
    monkeypatch.undo()
    assert "ckpt/rank-00000.safetensors" in _s3_files(run, options)  # the rank file went up ...
    with pytest.raises(ms.CheckpointNotFoundError):  # ... but nothing is committed
        ms.load(f"{run}/ckpt", storage_options=options)
    ck = ms.Checkpoints(run, storage_options=options)
    assert ck.list() == []
    ms.distributed.save({"w": torch.ones(2)}, f"{run}/other", storage_options=options)  # the next writer cleans
    assert [f for f in _s3_files(run, options) if not f.startswith(".modelsafe")] == [
        "other/manifest.json", "other/rank-00000.safetensors"]


def test_checkpoints_distributed_on_s3_in_one_process(s3_bucket):
    base, options = s3_bucket
    ck = ms.Checkpoints(f"{base}/run", keep_last=1, storage_options=options)
    for step in range(2):
        assert ck.save(_small_state(), step=step, distributed=True).name == f"step{step}"
    assert [i.name for i in ck.list()] == ["step1"]
    assert torch.equal(ms.load(f"{base}/run@latest", storage_options=options)["model"]["w"], _small_state()["model"]["w"])
    ck.close()


def test_a_corrupt_rank_file_on_s3_names_its_url_and_the_tensor(s3_bucket):
    from modelsafe.storage.remote import filesystem

    base, options = s3_bucket
    url = f"{base}/ckpt"
    ms.distributed.save({"w": torch.arange(1000, dtype=torch.float32)}, url, storage_options=options)
    fs, key = filesystem(f"{url}/rank-00000.safetensors", options)
    data = bytearray(fs.cat_file(key))
    data[-3] ^= 0x10
    fs.pipe_file(key, bytes(data))
    with pytest.raises(ms.CorruptCheckpointError) as info:
        ms.load(url, storage_options=options)
    assert f"{url}/rank-00000.safetensors" in str(info.value) and "tensor 'w'" in str(info.value)


def test_async_save_to_s3_commits_on_wait(s3_bucket):
    base, options = s3_bucket
    handle = ms.distributed.save(_small_state(), f"{base}/ckpt", async_save=True, storage_options=options)
    handle.wait()
    assert torch.equal(ms.load(f"{base}/ckpt", storage_options=options)["model"]["w"], _small_state()["model"]["w"])
    assert not [f for f in _s3_files(base, options) if ".modelsafe" in f]  # no marker left, the lease released


def test_storage_options_with_a_local_path_are_refused(tmp_path):
    with pytest.raises(ms.InvalidArgumentError, match="storage_options"):
        ms.distributed.save(_small_state(), str(tmp_path / "ckpt"), storage_options={"anon": True})
    assert not os.path.exists(tmp_path / "ckpt")
