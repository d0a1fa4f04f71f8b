"""Checkpoint directories on object stores are read by byte ranges: ms.open fetches the manifest,
the shard headers and the tensors asked for, never the whole checkpoint (directory.RemoteDirectory).

Runs against memory:// and a real S3-compatible server on loopback (moto, see conftest.py).
"""

from __future__ import annotations

import json
import os
import uuid

import numpy as np
import pytest

import modelsafe as ms
from modelsafe.storage.remote import filesystem

MIB = 1 << 20
N_TENSORS = 8


def _state(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {f"t{i}": rng.standard_normal(MIB // 4).astype(np.float32) for i in range(N_TENSORS)}


@pytest.fixture(params=["memory", "s3"])
def store(request) -> tuple[str, dict | None]:
    """(URL prefix, storage_options) of a fresh place on memory:// or the loopback S3 server."""
    if request.param == "memory":
        return f"memory://rread-{uuid.uuid4().hex[:12]}", None
    return request.getfixturevalue("s3_bucket")


def _fetched(monkeypatch, url: str, options: dict | None) -> list[int]:
    """Count the bytes every ``cat_file`` of ``url``'s file system returns from now on (range reads included)."""
    fs, _ = filesystem(url, options)
    counts: list[int] = []
    real = fs.cat_file

    def counting(path, start=None, end=None, **kwargs):
        data = real(path, start=start, end=end, **kwargs)
        counts.append(len(data))
        return data

    monkeypatch.setattr(fs, "cat_file", counting)
    return counts


def _saved_run(store) -> tuple[str, dict | None, str, dict]:
    prefix, options = store
    run = f"{prefix}/run"
    state = _state()
    with ms.Checkpoints(run, storage_options=options, dedup=False) as ck:  # one shard holding every tensor
        info = ck.save(state, step=1)
    return run, options, info.path, state


def _sharded(tmp_path, url: str, options: dict | None) -> dict:
    """A checkpoint of ms.distributed.save (one process), uploaded object by object to ``url``."""
    torch = pytest.importorskip("torch")
    state = {"model": {k: torch.from_numpy(v) for k, v in _state(1).items()}, "lr": 0.5}
    local = str(tmp_path / "sharded")
    ms.distributed.save(state, local)
    fs, key = filesystem(url, options)
    for name in os.listdir(local):
        fs.put_file(os.path.join(local, name), f"{key}/{name}")
    return state


# -- range reads ----------------------------------------------------------------------------

@pytest.mark.parametrize("address", ["checkpoint", "run", "run@latest", "run@1"])
def test_open_reads_one_tensor_by_ranges(store, monkeypatch, address):
    run, options, checkpoint, state = _saved_run(store)
    url = {"checkpoint": checkpoint, "run": run, "run@latest": f"{run}@latest", "run@1": f"{run}@1"}[address]
    counts = _fetched(monkeypatch, run, options)
    with ms.open(url, storage_options=options) as reader:
        assert sorted(reader.keys()) == sorted(state)
        np.testing.assert_array_equal(reader["t3"], state["t3"])
    total = N_TENSORS * MIB
    assert MIB <= sum(counts) < 2 * MIB, (sum(counts), total)


def test_open_sharded_reads_one_tensor_by_ranges(store, tmp_path, monkeypatch):
    prefix, options = store
    url = f"{prefix}/sharded"
    state = _sharded(tmp_path, url, options)
    counts = _fetched(monkeypatch, url, options)
    with ms.open(url, storage_options=options) as reader:
        assert "model.t5" in reader.keys()
        np.testing.assert_array_equal(np.asarray(reader.get("model.t5", framework="numpy")), state["model"]["t5"].numpy())
    assert MIB <= sum(counts) < 2 * MIB


def test_load_and_load_into_equal_local(store, tmp_path):
    run, options, checkpoint, state = _saved_run(store)
    loaded = ms.load(checkpoint, storage_options=options)
    assert sorted(loaded) == sorted(state)
    for key, value in state.items():
        np.testing.assert_array_equal(loaded[key], value)
    target = {k: np.zeros_like(v) for k, v in state.items()}
    ms.load_into(target, checkpoint, storage_options=options)
    for key, value in state.items():
        np.testing.assert_array_equal(target[key], value)
    target = {k: np.zeros_like(v) for k, v in state.items()}
    info = ms.Checkpoints(run, storage_options=options).load_into(target)
    assert info is not None and info.step == 1
    for key, value in state.items():
        np.testing.assert_array_equal(target[key], value)


def test_load_into_with_select_reads_only_what_it_loads(store, monkeypatch):
    run, options, checkpoint, state = _saved_run(store)
    counts = _fetched(monkeypatch, run, options)
    target = {"t2": np.zeros_like(state["t2"])}
    report = ms.load_into(target, checkpoint, strict=False, select=["t2"], storage_options=options)
    np.testing.assert_array_equal(target["t2"], state["t2"])
    assert "t2" in report.loaded and sum(counts) < 2 * MIB


def test_sharded_load_and_distributed_load_into(store, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    prefix, options = store
    url = f"{prefix}/sharded"
    saved = _sharded(tmp_path, url, options)
    loaded = ms.load(url, storage_options=options)
    for key, value in saved["model"].items():
        assert torch.equal(loaded["model"][key], value)
    counts = _fetched(monkeypatch, url, options)
    state = {"model": {k: torch.zeros_like(v) for k, v in saved["model"].items()}, "lr": 0.0}
    ms.distributed.load_into(state, url, storage_options=options)
    for key, value in saved["model"].items():
        assert torch.equal(state["model"][key], value)
    assert state["lr"] == 0.5
    assert sum(counts) < (N_TENSORS + 1) * MIB  # each chunk once, by its range


def test_distributed_load_into_storage_options_is_keyword_only():
    import inspect

    parameter = inspect.signature(ms.distributed.load_into).parameters["storage_options"]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY


# -- hostile objects ---------------------------------------------------------------------------

def _shard_url(checkpoint: str, options: dict | None) -> str:
    fs, key = filesystem(checkpoint, options)
    manifest = json.loads(fs.cat_file(f"{key}/manifest.json"))
    return f"{checkpoint}/{manifest['shards'][0]['file']}"


def _rewrite(url: str, options: dict | None, change) -> None:
    fs, key = filesystem(url, options)
    data = fs.cat_file(key)
    fs.pipe_file(key, change(data))
    fs.invalidate_cache()


def test_oversized_manifest_is_refused_after_a_bounded_read(monkeypatch):
    import modelsafe.checkpoint_dir as checkpoint_dir

    url = f"memory://rread-{uuid.uuid4().hex[:12]}/ckpt"
    fs, key = filesystem(url)
    fs.pipe_file(f"{key}/manifest.json", b" " * (64 << 10))
    monkeypatch.setattr(checkpoint_dir, "MAX_MANIFEST_BYTES", 4096)
    counts = _fetched(monkeypatch, url, None)
    with pytest.raises(ms.CorruptCheckpointError, match="limit") as caught:
        ms.open(url)
    assert url in str(caught.value)
    assert max(counts) <= 4097


def test_truncated_shard_names_the_shard_and_the_tensor(store):
    _run, options, checkpoint, _state_ = _saved_run(store)
    shard = _shard_url(checkpoint, options)
    _rewrite(shard, options, lambda data: data[: len(data) - MIB // 2])
    with pytest.raises(ms.CorruptCheckpointError) as caught:
        ms.open(checkpoint, storage_options=options)
    assert shard in str(caught.value) and caught.value.key == f"t{N_TENSORS - 1}"


def test_shard_larger_than_its_header_and_manifest_is_refused(store):
    _run, options, checkpoint, _state_ = _saved_run(store)
    shard = _shard_url(checkpoint, options)
    _rewrite(shard, options, lambda data: data + b"\0" * 64)
    with pytest.raises(ms.CorruptCheckpointError) as caught:
        ms.load(checkpoint, storage_options=options)
    assert shard in str(caught.value)


def test_manifest_lying_about_the_shard_size_is_refused(store):
    _run, options, checkpoint, _state_ = _saved_run(store)
    shard = _shard_url(checkpoint, options)

    def lie(data: bytes) -> bytes:
        manifest = json.loads(data)
        manifest["shards"][0]["size"] += 1
        return json.dumps(manifest).encode()

    _rewrite(f"{checkpoint}/manifest.json", options, lie)
    with pytest.raises(ms.CorruptCheckpointError, match="manifest.json says") as caught:
        ms.open(checkpoint, storage_options=options)
    assert shard in str(caught.value)


def test_corrupted_tensor_bytes_name_the_shard_and_the_tensor(store):
    _run, options, checkpoint, state = _saved_run(store)
    shard = _shard_url(checkpoint, options)
    with ms.open(checkpoint, storage_options=options) as reader:
        record = reader.record("t4")
    fs, key = filesystem(shard, options)
    data = bytearray(fs.cat_file(key))
    data_start = len(data) - N_TENSORS * MIB
    data[data_start + record.begin + 100] ^= 0x10
    fs.pipe_file(key, bytes(data))
    with ms.open(checkpoint, storage_options=options) as reader:
        np.testing.assert_array_equal(reader["t3"], state["t3"])  # the others still read
        with pytest.raises(ms.CorruptCheckpointError) as caught:
            reader["t4"]
    assert shard in str(caught.value) and caught.value.key == "t4"
    with pytest.raises(ms.CorruptCheckpointError, match="t4"):
        ms.load(checkpoint, storage_options=options)


def test_checkpoint_deleted_between_open_and_read(store):
    _run, options, checkpoint, _state_ = _saved_run(store)
    fs, key = filesystem(checkpoint, options)
    with ms.open(checkpoint, storage_options=options) as reader:
        fs.rm(key, recursive=True)
        fs.invalidate_cache()
        with pytest.raises(ms.CheckpointRemovedError) as caught:
            reader["t1"]
    assert checkpoint in str(caught.value)


def test_sharded_corrupt_chunk_names_the_rank_file_and_tensor(store, tmp_path):
    torch = pytest.importorskip("torch")
    prefix, options = store
    url = f"{prefix}/sharded"
    saved = _sharded(tmp_path, url, options)
    rank = f"{url}/rank-00000.safetensors"
    fs, key = filesystem(rank, options)
    data = bytearray(fs.cat_file(key))
    data[-10] ^= 0x01  # the last payload's bytes
    fs.pipe_file(key, bytes(data))
    state = {"model": {k: torch.zeros_like(v) for k, v in saved["model"].items()}, "lr": 0.0}
    with pytest.raises(ms.CorruptCheckpointError) as caught:
        ms.distributed.load_into(state, url, storage_options=options)
    assert rank in str(caught.value) and caught.value.key.startswith("model.")


def test_missing_remote_checkpoint_names_the_url(store):
    prefix, options = store
    url = f"{prefix}/nothing-here"
    with pytest.raises(ms.CheckpointNotFoundError) as caught:
        ms.open(url, storage_options=options)
    assert url in str(caught.value)
    torch = pytest.importorskip("torch")
    with pytest.raises(ms.ModelsafeError) as caught:
        ms.distributed.load_into({"w": torch.zeros(1)}, url, storage_options=options)
    assert url in str(caught.value)


# -- verify by ranges ----------------------------------------------------------------------------

def test_verify_reads_one_record_at_a_time(store, monkeypatch):
    from modelsafe.verification import Checked, check

    _run, options, checkpoint, state = _saved_run(store)
    counts = _fetched(monkeypatch, checkpoint, options)
    events = list(check(checkpoint, storage_options=options))
    assert sorted(e.tensor for e in events if isinstance(e, Checked)) == sorted(state)
    assert sum(counts) >= N_TENSORS * MIB and max(counts) <= MIB + (64 << 10)  # one tensor per request, nothing more


def test_verify_names_every_corrupt_tensor_by_url(store):
    from modelsafe.verification import Checked, Problem, check

    _run, options, checkpoint, _state_ = _saved_run(store)
    shard = _shard_url(checkpoint, options)
    with ms.open(checkpoint, storage_options=options) as reader:
        spans = {k: reader.record(k) for k in ("t2", "t6")}
    fs, key = filesystem(shard, options)
    data = bytearray(fs.cat_file(key))
    data_start = len(data) - N_TENSORS * MIB
    for record in spans.values():
        data[data_start + record.begin + 7] ^= 0x01
    fs.pipe_file(key, bytes(data))
    events = list(check(checkpoint, storage_options=options))
    problems = [e for e in events if isinstance(e, Problem)]
    assert sorted(p.tensor for p in problems) == ["t2", "t6"]
    assert all(p.file == shard and shard in str(p.error) for p in problems)
    assert len([e for e in events if isinstance(e, Checked)]) == N_TENSORS - 2


def test_cli_verify_of_a_remote_run(monkeypatch):
    from cli_support import invoke

    run = f"memory://rread-{uuid.uuid4().hex[:12]}/run"
    with ms.Checkpoints(run, dedup=False) as ck:  # one shard per checkpoint
        ck.save(_state(), step=1)
        ck.save(_state(2), step=2)
    document = invoke("verify", run, "--json").json()
    assert document["ok"] and document["checked"]["tensors"] == 2 * N_TENSORS
    shard = _shard_url(ck.latest().path, None)
    _rewrite(shard, None, lambda data: data[:-5] + bytes(b ^ 1 for b in data[-5:]))
    result = invoke("verify", f"{run}@latest")
    assert result.code == 1 and shard in result.out and f"t{N_TENSORS - 1}" in result.out


def test_bound_load_of_a_remote_checkpoint_copies_only_its_files(store, monkeypatch):
    prefix, options = store
    run = f"{prefix}/bound"
    ck = ms.Checkpoints(run, storage_options=options)

    def save(path: str) -> None:
        with open(os.path.join(path, "model.txt"), "w") as f:
            f.write("weights")

    def load(path: str) -> str:
        with open(os.path.join(path, "model.txt")) as f:
            return f.read()

    ck.bind(save=save, load=load)
    ck.save(_state(), step=1)  # the state's shards and the bound file
    counts = _fetched(monkeypatch, run, options)
    assert ms.Checkpoints(run, storage_options=options).bind(load=load).load(1)["t0"].shape == (MIB // 4,)
    counts.clear()
    only_files = ms.Checkpoints(run, storage_options=options).bind(load=load)
    assert only_files._call_bound_load(only_files.info(1), verify=True) == "weights"
    assert sum(counts) < MIB  # the manifest and files/, never the shards
    ck.close()


def test_a_local_manifest_lying_about_the_shard_size_is_refused_too(tmp_path):
    """The same check, made through the local directory: one CheckpointSource for both."""
    with ms.Checkpoints(str(tmp_path / "run")) as ck:
        checkpoint = ck.save({"w": np.arange(10.0)}, step=1).path
    path = os.path.join(checkpoint, "manifest.json")
    manifest = json.load(open(path))
    manifest["shards"][0]["size"] -= 1
    with open(path, "w") as f:
        json.dump(manifest, f)
    with pytest.raises(ms.CorruptCheckpointError, match="manifest.json says") as caught:
        ms.load(checkpoint)
    assert caught.value.path == os.path.join(checkpoint, manifest["shards"][0]["file"])


def test_many_small_tensors_load_in_few_requests(monkeypatch):
    """Neighbouring records are fetched together: a load of 2,000 small tensors is not 2,000 requests."""
    url = f"memory://rread-{uuid.uuid4().hex[:12]}/run"
    state = {f"p{i}": np.full(16, i, np.float32) for i in range(2000)}
    with ms.Checkpoints(url) as ck:
        checkpoint = ck.save(state, step=1).path
    counts = _fetched(monkeypatch, url, None)
    target = {k: np.zeros_like(v) for k, v in state.items()}
    ms.load_into(target, checkpoint)
    assert all(np.array_equal(target[k], v) for k, v in state.items())
    assert len(counts) < 10
    counts.clear()
    with ms.open(checkpoint) as reader:
        loaded = reader.load()
        assert np.array_equal(reader["p1999"], state["p1999"])
    assert all(np.array_equal(loaded[k], v) for k, v in state.items()) and len(counts) < 10


def test_verify_of_a_remote_sharded_checkpoint_names_the_rank_file(store, tmp_path):
    from modelsafe.verification import Checked, Problem, check

    prefix, options = store
    url = f"{prefix}/sharded"
    _sharded(tmp_path, url, options)
    assert all(isinstance(e, Checked) for e in check(url, storage_options=options))
    rank = f"{url}/rank-00000.safetensors"
    _rewrite(rank, options, lambda data: data[:-10] + bytes([data[-10] ^ 1]) + data[-9:])
    problems = [e for e in check(url, storage_options=options) if isinstance(e, Problem)]
    assert len(problems) == 1 and rank in str(problems[0].error) and problems[0].tensor.startswith("model.")


def test_shards_opened_together_report_each_problem_by_its_own_url(store):
    """The shard headers of a remote checkpoint are fetched concurrently; each problem still
    names its own shard, a good shard still loads, and the first problem is what ms.open raises."""
    from modelsafe.verification import Problem, check

    prefix, options = store
    state = {f"t{i}": np.full(1 << 20, i, np.float32) for i in range(4)}  # 4 MiB each: a shard each
    with ms.Checkpoints(f"{prefix}/many", storage_options=options) as ck:
        checkpoint = ck.save(state, step=0).path
    fs, key = filesystem(checkpoint, options)
    shards = [s["file"] for s in json.loads(fs.cat_file(f"{key}/manifest.json"))["shards"]]
    assert len(shards) == 4
    fs.rm_file(f"{key}/{shards[1]}")
    _rewrite(f"{checkpoint}/{shards[3]}", options, lambda data: data[:-100])
    problems = [e for e in check(checkpoint, storage_options=options) if isinstance(e, Problem)]
    assert sorted(p.file for p in problems) == [f"{checkpoint}/{shards[1]}", f"{checkpoint}/{shards[3]}"]
    assert "missing" in str(next(p.error for p in problems if p.file.endswith(shards[1])))
    with pytest.raises(ms.CorruptCheckpointError, match=shards[1]):
        ms.open(checkpoint, storage_options=options)
