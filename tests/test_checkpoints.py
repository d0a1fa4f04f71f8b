"""ms.Checkpoints: save/list/latest/best/load, names, directory format, lock, fork, export."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import modelsafe as ms
from modelsafe.checkpoint_dir import CheckpointSource, plan_shards, write_shards
from modelsafe.checkpoint_names import format_name
from modelsafe.storage.commit import RunLockedError
from modelsafe.tree import flatten

torch = pytest.importorskip("torch")


def state(step: int) -> dict:
    torch.manual_seed(step)
    model = torch.nn.Linear(3, 2)
    return {"model": model.state_dict(), "epoch": step, "hist": [float(step), 0.5]}


def test_save_list_latest_best_load(tmp_path):
    ck = ms.Checkpoints(tmp_path / "run", keep_last=2, keep_best=1, monitor="val_loss",
                        name="epoch{step:03d}-val_loss{val_loss:.4f}")
    assert ck.list() == [] and ck.latest() is None and ck.best() is None
    saved = {}
    for step, v in enumerate([0.9, 0.2, 0.5, 0.7, 0.6]):
        saved[step] = state(step)
        info = ck.save(saved[step], step=step, metrics={"val_loss": v})
        assert isinstance(info, ms.CheckpointInfo) and info.step == step
    names = [i.name for i in ck.list()]
    assert names == ["epoch001-val_loss0.2000", "epoch003-val_loss0.7000", "epoch004-val_loss0.6000"]
    assert ck.latest().step == 4 and ck.best().step == 1
    info = ck.best()
    assert info.metrics == {"val_loss": 0.2} and info.size > 0 and os.path.isdir(info.path)
    assert info.time.tzinfo is not None
    for which in ("best", 1, "epoch001-val_loss0.2000", "1"):
        back = ck.load(which)
        assert back["epoch"] == 1 and torch.equal(back["model"]["weight"], saved[1]["model"]["weight"])
    assert ck.load()["epoch"] == 4
    with pytest.raises(ms.CheckpointNotFoundError, match="no committed checkpoint 2"):
        ck.load(2)
    with pytest.raises(FileNotFoundError):
        ck.load("nope")
    ck.close()


def test_order_is_by_step_in_the_manifest_not_name_or_mtime(tmp_path):
    ck = ms.Checkpoints(tmp_path, name="{tag}-{step}")
    for step, tag in [(5, "a"), (2, "z"), (9, "m")]:
        with pytest.warns(UserWarning) if step == 2 else _nothing():
            ck.save({"x": np.array(step)}, step=step, metrics={"tag": step})
    os.utime(os.path.join(tmp_path, "5-5"), (1, 1))
    assert [i.step for i in ck.list()] == [2, 5, 9]
    assert ck.latest().step == 9
    ck.close()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def test_a_checkpoint_directory_is_a_modelsafe_path(tmp_path):
    ck = ms.Checkpoints(tmp_path / "run")
    s = state(3)
    info = ck.save(s, step=3, metadata={"note": "hello"})
    for path in (info.path, tmp_path / "run"):  # a checkpoint, or a run (its latest)
        back = ms.load(path)
        assert back["epoch"] == 3 and torch.equal(back["model"]["bias"], s["model"]["bias"])
        with ms.open(path) as r:
            assert "model.weight" in r.keys() and r.metadata == {"note": "hello"}
            assert torch.equal(r["model.weight"], s["model"]["weight"])
    manifest = json.load(open(os.path.join(info.path, "manifest.json")))
    assert manifest["checkpoint"]["step"] == 3 and manifest["format_version"][0] == 1
    assert all(len(t["xxh3"]) == 16 and t["file"].endswith(".safetensors") for t in manifest["tensors"].values())
    # each shard is itself a valid safetensors file
    from safetensors import safe_open

    with safe_open(os.path.join(info.path, manifest["shards"][0]["file"]), "pt") as f:
        assert torch.equal(f.get_tensor("model.weight"), s["model"]["weight"])
    ck.close()


def test_multiple_shards_round_trip(tmp_path):
    tensors = {f"t{i}": np.arange(100, dtype=np.float32) + i for i in range(7)}
    fl = flatten(tensors)
    assert len(plan_shards(fl.payloads, 1000)) == 4
    checksums, placement, shards = write_shards(str(tmp_path), fl, max_shard_bytes=1000)
    assert len(shards) == 4 and len(set(placement.values())) == 4
    from modelsafe.checkpoint_dir import build_manifest, write_manifest

    write_manifest(str(tmp_path), build_manifest(fl, None, checksums, placement, shards, {},
                                                 {"name": "x", "step": 0, "metrics": {}}))
    back = ms.load(tmp_path)
    assert back.keys() == tensors.keys() and all(np.array_equal(back[k], tensors[k]) for k in tensors)


def test_flipped_bit_in_a_shard_is_caught(tmp_path):
    ck = ms.Checkpoints(tmp_path)
    info = ck.save({"w": np.arange(1000, dtype=np.float64)}, step=0)
    shard = os.path.join(info.path, "state-00001-of-00001.safetensors")
    data = bytearray(open(shard, "rb").read())
    data[-5] ^= 1
    os.chmod(shard, 0o644)
    with open(shard, "r+b") as f:
        f.write(data)
    with pytest.raises(ms.CorruptCheckpointError, match="state-00001-of-00001.safetensors.*'w'"):
        ck.load(0)
    ck.close()


def test_manifest_and_shard_must_agree(tmp_path):
    ck = ms.Checkpoints(tmp_path)
    info = ck.save({"w": np.arange(4)}, step=0)
    path = os.path.join(info.path, "manifest.json")
    manifest = json.load(open(path))
    manifest["tensors"]["w"]["xxh3"] = "0123456789abcdef"
    json.dump(manifest, open(path, "w"))
    with pytest.raises(ms.CorruptCheckpointError, match="disagree"):
        CheckpointSource(info.path)
    manifest["files"] = {"files/../../etc/passwd": {"size": 1, "xxh3": "0" * 16}}
    json.dump(manifest, open(path, "w"))
    with pytest.raises(ms.CorruptCheckpointError, match="outside files/"):
        CheckpointSource(info.path)
    ck.close()


def test_names(tmp_path):
    assert format_name("epoch{step:03d}-val_loss{val_loss:.4f}", 7, {"val_loss": 0.42101}) == "epoch007-val_loss0.4210"
    assert format_name("{a}", 1, {"a": 0.5}) == "0.5" and format_name("x/{step}", 1, {}) == "x_1"
    assert format_name("../{step}", 1, {}) == "_1" or format_name("../{step}", 1, {}).startswith("_")
    with pytest.raises(ValueError, match="uses {val_loss}"):
        format_name("{val_loss}", 1, {})
    with pytest.raises(ValueError, match="reserved"):
        format_name("best", 1, {})
    with pytest.raises(ValueError, match="digits"):
        format_name("{step}", 1, {})
    ck = ms.Checkpoints(tmp_path, name="fixed")
    ck.save({"a": 1}, step=1)
    with pytest.raises(ValueError, match="already taken by step 1"):
        ck.save({"a": 2}, step=2)
    ck.save({"a": 3}, step=1)  # the same step again replaces it
    assert ck.load("fixed") == {"a": 3} and len(ck.list()) == 1
    ck.close()


def test_metrics_may_be_tensors_and_non_finite(tmp_path):
    ck = ms.Checkpoints(tmp_path, keep_best=1, keep_last=1, monitor="loss")
    ck.save({"a": 1}, step=0, metrics={"loss": torch.tensor(0.5), "acc": np.float32(0.25)})
    ck.save({"a": 2}, step=1, metrics={"loss": float("nan")})
    ck.save({"a": 3}, step=2, metrics={"loss": 0.9})
    infos = ck.list()
    assert [i.step for i in infos] == [0, 2]
    assert infos[0].metrics == {"loss": 0.5, "acc": 0.25}
    ck.save({"a": 4}, step=3, metrics={"loss": float("inf")})
    assert ck.list()[-1].metrics["loss"] == float("inf") and ck.best().step == 0
    with pytest.raises(TypeError, match="metric 'loss'"):
        ck.save({}, step=9, metrics={"loss": "low"})
    ck.close()


def test_step_defaults_to_one_past_latest(tmp_path):
    ck = ms.Checkpoints(tmp_path)
    assert [ck.save({"i": i}).step for i in range(3)] == [0, 1, 2]
    ck.close()


def test_no_limits_keeps_everything_and_never_touches_foreign_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "other").mkdir()
    ck = ms.Checkpoints(tmp_path, keep_last=1)
    for i in range(4):
        ck.save({"i": i}, step=i)
    assert [i.step for i in ck.list()] == [3]
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "other").is_dir()
    ck.close()
    ck = ms.Checkpoints(tmp_path, keep_last=None)  # given: overrides the run's keep_last=1
    for i in range(4, 7):
        ck.save({"i": i}, step=i)
    assert len(ck.list()) == 4
    ck.close()


def test_checkpoints_of_another_run_are_never_pruned(tmp_path):
    other = ms.Checkpoints(tmp_path / "a")
    foreign = other.save({"x": 1}, step=100)
    other.close()
    os.rename(foreign.path, tmp_path / "b-foreign")
    os.makedirs(tmp_path / "b")
    os.rename(tmp_path / "b-foreign", tmp_path / "b" / "step100")
    ck = ms.Checkpoints(tmp_path / "b", keep_last=1)
    for i in range(3):
        with pytest.warns(UserWarning, match="counts as older"):
            ck.save({"i": i}, step=i)
    names = [i.name for i in ck.list()]
    assert "step100" in names and names == ["step2", "step100"]
    with pytest.raises(ValueError, match="not written by this run"):
        ck.save({"x": 2}, step=100)
    ck.close()


def test_a_second_writer_gets_a_clear_error(tmp_path):
    first = ms.Checkpoints(tmp_path)
    first.save({"a": 1}, step=0)
    second = ms.Checkpoints(tmp_path)
    assert second.latest().step == 0  # reading needs no lock
    with pytest.raises(RunLockedError, match="another writer holds this run") as err:
        second.save({"a": 2}, step=1)
    assert isinstance(err.value, ms.StorageError) and str(os.getpid()) in str(err.value)
    first.close()
    second.save({"a": 2}, step=1)
    second.close()


def test_a_second_writer_in_another_process_is_refused(tmp_path):
    import subprocess
    import sys

    ck = ms.Checkpoints(tmp_path)
    ck.save({"a": 1}, step=0)
    code = (
        "import modelsafe as ms, sys\n"
        f"ck = ms.Checkpoints({str(tmp_path)!r})\n"
        "try:\n    ck.save({'a': 2}, step=1)\nexcept ms.StorageError as e:\n    print('LOCKED', e); sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3 and "another writer holds this run" in proc.stdout, proc.stderr
    ck.close()


def test_load_into_resumes_from_the_latest(tmp_path):
    ck = ms.Checkpoints(tmp_path, keep_last=2)
    assert ck.load_into({"model": torch.nn.Linear(3, 2)}) is None
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for step in range(3):
        model(torch.randn(4, 3)).sum().backward()
        opt.step()
        ck.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": step}, step=step)
    ck.close()

    fresh = torch.nn.Linear(3, 2)
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    target = {"model": fresh, "optimizer": fresh_opt, "epoch": 0}
    info = ms.Checkpoints(tmp_path).load_into(target)
    assert info.step == 2 and target["epoch"] == 2
    assert torch.equal(fresh.weight, model.weight)
    assert fresh_opt.state_dict()["state"][0]["momentum_buffer"].equal(opt.state_dict()["state"][0]["momentum_buffer"])


def test_fork_links_files_and_records_lineage(tmp_path):
    ck = ms.Checkpoints(tmp_path / "a", keep_best=1, keep_last=1, monitor="loss")
    for step, loss in enumerate([0.3, 0.1, 0.2]):
        ck.save({"w": np.full(1000, step, np.float32)}, step=step, metrics={"loss": loss})
    forked = ck.fork(tmp_path / "b")
    assert isinstance(forked, ms.Checkpoints)
    [seed] = forked.list()
    assert seed.step == 1 and seed.metrics == {"loss": 0.1}
    src_shard = os.path.join(ck.best().path, "state-00001-of-00001.safetensors")
    dst_shard = os.path.join(seed.path, "state-00001-of-00001.safetensors")
    assert os.stat(src_shard).st_ino == os.stat(dst_shard).st_ino  # hard link: no byte copied
    assert seed.lineage[-1]["checkpoint"] == ck.best().name and seed.lineage[-1]["run"] == ck.directory
    assert np.array_equal(forked.load()["w"], np.full(1000, 1, np.float32))
    # the new run goes on by itself; pruning it leaves the source intact
    for step in (2, 3, 4):
        forked.save({"w": np.zeros(2)}, step=step, metrics={"loss": 0.5})
    assert ms.load(ck.best().path)["w"][0] == 1
    with pytest.raises(ms.StorageError, match="another writer"):
        ck.fork(tmp_path / "b", which="latest")
    forked.close()
    with pytest.raises(ValueError, match="already holds checkpoints"):
        ck.fork(tmp_path / "b", which="latest")
    # lineage chains through forks
    again = forked.fork(tmp_path / "c", which=1)
    assert [e["checkpoint"] for e in again.latest().lineage] == ["step1", "step1"]
    again.close()
    ck.close()


def test_export_writes_inference_weights_as_one_safetensors_file(tmp_path):
    from safetensors import safe_open

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    ck = ms.Checkpoints(tmp_path / "run", keep_best=1, monitor="loss")
    ck.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 1}, step=1, metrics={"loss": 0.2})
    with torch.no_grad():
        model[0].weight.add_(1)
    ck.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 2}, step=2, metrics={"loss": 0.4})
    out = tmp_path / "model.safetensors"
    info = ck.export(out)
    assert info.step == 1
    with safe_open(str(out), "pt") as f:
        assert sorted(f.keys()) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    back = ms.load(out)
    assert torch.equal(back["0.weight"], ck.load("best")["model"]["0.weight"])
    with ms.open(out) as r:
        assert r.metadata["exported_from"]["step"] == 1
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    fresh.load_state_dict(back)
    ck.export(tmp_path / "latest.safetensors", which="latest")
    assert torch.equal(ms.load(tmp_path / "latest.safetensors")["0.weight"], model[0].weight.detach())
    ck.close()


def test_export_of_a_state_without_model_entry_exports_everything(tmp_path):
    ck = ms.Checkpoints(tmp_path / "run")
    ck.save({"a": np.arange(3), "b": [np.ones(2), "text"]}, step=0)
    ck.export(tmp_path / "all.safetensors", which="latest")
    back = ms.load(tmp_path / "all.safetensors")
    assert np.array_equal(back["a"], np.arange(3)) and back["b"][1] == "text"
    ck.close()


def test_best_needs_a_monitor(tmp_path):
    ck = ms.Checkpoints(tmp_path)
    ck.save({"a": 1}, step=0)
    with pytest.raises(ValueError, match="monitor"):
        ck.best()
    with pytest.raises(ValueError, match="monitor"):
        ms.Checkpoints(tmp_path, keep_best=2)
    with pytest.raises(ValueError, match="mode"):
        ms.Checkpoints(tmp_path, mode="lowest")
    ck.close()


def test_re_saving_a_name_swaps_atomically(tmp_path):
    ck = ms.Checkpoints(tmp_path)
    ck.save({"v": 1}, step=0)
    ck.save({"v": 2}, step=0)
    assert ck.load(0) == {"v": 2}
    assert sorted(os.listdir(tmp_path)) == [".modelsafe-run.json", ".modelsafe.lock", "step0"]
    ck.close()


def test_delete_one_checkpoint(tmp_path):
    ck = ms.Checkpoints(tmp_path)
    for i in range(3):
        ck.save({"i": i}, step=i)
    assert ck.delete(1).name == "step1"
    assert [i.step for i in ck.list()] == [0, 2]
    with pytest.raises(ms.CheckpointNotFoundError):
        ck.delete(1)
    ck.close()


def test_ms_load_into_takes_a_checkpoint_or_run_directory(tmp_path):
    model = torch.nn.Linear(3, 2)
    ck = ms.Checkpoints(tmp_path / "run")
    info = ck.save({"model": model.state_dict()}, step=0)
    ck.close()
    for path in (info.path, tmp_path / "run"):
        fresh = torch.nn.Linear(3, 2)
        report = ms.load_into({"model": fresh}, path)
        assert torch.equal(fresh.weight, model.weight), report


def test_an_empty_run_is_not_loadable(tmp_path):
    ck = ms.Checkpoints(tmp_path / "run")
    ck._become_writer()  # creates the run file, no checkpoint yet
    with pytest.raises(ms.CheckpointNotFoundError, match="no committed checkpoint"):
        ms.load(tmp_path / "run")
    with pytest.raises(ms.CheckpointNotFoundError, match="no committed checkpoint"):
        ck.load()
    ck.close()


def test_the_run_file_records_the_training_settings(tmp_path):
    ck = ms.Checkpoints(tmp_path, keep_last=2, keep_best=1, monitor="val", mode="max", name="e{step}")
    ck.save({"a": 1}, step=0, metrics={"val": 1.0})
    ck.close()
    run = json.load(open(tmp_path / ".modelsafe-run.json"))
    assert (run["monitor"], run["mode"], run["keep_last"], run["keep_best"], run["name"]) == ("val", "max", 2, 1, "e{step}")
    maintenance = ms.Checkpoints(tmp_path)  # e.g. a CLI deleting one checkpoint
    maintenance.delete(0)
    maintenance.close()
    assert json.load(open(tmp_path / ".modelsafe-run.json")) == run


def test_infos_of_the_writer_equal_those_read_back_from_disk(tmp_path):
    ck = ms.Checkpoints(tmp_path, keep_last=3)
    written = [ck.save({"w": np.arange(i + 10)}, step=i, metrics={"m": i / 3}) for i in range(4)]
    fresh = ms.Checkpoints(tmp_path).list()
    assert ck.list() == fresh == written[1:]
    on_disk = [sum(f.stat().st_size for f in (tmp_path / i.name).rglob("*") if f.is_file()) for i in fresh]
    assert [i.size for i in fresh] == on_disk
    ck.close()


def _mutations():
    from hypothesis import strategies as st

    junk = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**12), st.floats(allow_nan=False), st.text(max_size=8),
                     st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))
    return st.tuples(st.integers(0, 10**6), junk)


def test_hostile_manifests_give_corruption_errors_never_crashes(tmp_path):
    from hypothesis import HealthCheck, given, settings

    ck = ms.Checkpoints(tmp_path / "run")
    ck.bind(save=lambda p: open(os.path.join(p, "f.bin"), "wb").write(b"abc"))
    info = ck.save({"w": np.arange(4), "n": [1, "x"]}, step=3, metrics={"loss": 0.5})
    ck.close()
    path = os.path.join(info.path, "manifest.json")
    original = json.load(open(path))

    def paths(node, prefix=()):
        yield prefix
        if isinstance(node, dict):
            for k, v in node.items():
                yield from paths(v, prefix + (k,))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                yield from paths(v, prefix + (i,))

    all_paths = [p for p in paths(original) if p]

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_mutations())
    def check(mutation):
        index, value = mutation
        target = all_paths[index % len(all_paths)]
        doc = json.loads(json.dumps(original))
        node = doc
        for part in target[:-1]:
            node = node[part]
        node[target[-1]] = value
        with open(path, "w") as f:
            json.dump(doc, f)
        try:
            with CheckpointSource(info.path) as source:
                ms.load(info.path)
                source.verify_files()
        except ms.ModelsafeError:
            pass
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            listed = ms.Checkpoints(tmp_path / "run").list()  # a damaged manifest is skipped with a warning
        assert len(listed) <= 1

    check()


@pytest.mark.parametrize("module", ["checkpoints", "retention", "checkpoint_names"])
def test_docstring_examples_run(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(f"modelsafe.{module}"))
    assert result.attempted > 0 and result.failed == 0
