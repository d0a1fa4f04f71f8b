"""Checkpoints.bind: the NSML contract (save(path, **kwargs) / load(path)) on top of atomic commits."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import modelsafe as ms

torch = pytest.importorskip("torch")


def test_save_gets_a_fresh_empty_directory_and_the_bind_kwargs(tmp_path):
    seen = []

    def save(path, **kwargs):
        seen.append((path, sorted(os.listdir(path)), kwargs))
        with open(os.path.join(path, "weights.bin"), "wb") as f:
            f.write(b"w" * 100)

    ck = ms.Checkpoints(tmp_path / "run")
    ck.bind(save=save, real=True, scale=2)
    info = ck.save(step=1)
    ck.save(step=2)
    (path1, before1, kwargs1), (path2, before2, _) = seen
    assert before1 == [] and before2 == [] and path1 != path2
    assert kwargs1 == {"real": True, "scale": 2}
    assert os.path.basename(path1) == "files" and not os.path.exists(path1)  # staged, then committed elsewhere
    assert open(os.path.join(info.path, "files", "weights.bin"), "rb").read() == b"w" * 100
    ck.close()


def test_many_files_and_subdirectories_round_trip_through_load(tmp_path):
    model = torch.nn.Linear(4, 2)

    def save(path):
        torch.save(model.state_dict(), os.path.join(path, "model.pt"))
        os.makedirs(os.path.join(path, "extra", "deep"))
        with open(os.path.join(path, "extra", "deep", "notes.json"), "w") as f:
            json.dump({"lr": 0.1}, f)

    loaded = {}

    def load(path):
        loaded["state"] = torch.load(os.path.join(path, "model.pt"), weights_only=True)
        loaded["notes"] = json.load(open(os.path.join(path, "extra", "deep", "notes.json")))
        return "done"

    ck = ms.Checkpoints(tmp_path, keep_last=2)
    ck.bind(save=save, load=load)
    ck.save(step=0)
    assert ck.load() == "done"  # nothing saved by modelsafe itself: the bound load's result
    assert torch.equal(loaded["state"]["weight"], model.weight.detach()) and loaded["notes"] == {"lr": 0.1}
    manifest = json.load(open(os.path.join(ck.latest().path, "manifest.json")))
    assert sorted(manifest["files"]) == ["files/extra/deep/notes.json", "files/model.pt"]
    assert all(len(e["xxh3"]) == 16 and e["size"] > 0 for e in manifest["files"].values())
    assert ck.latest().size > sum(e["size"] for e in manifest["files"].values())
    ck.close()


def test_bound_files_and_a_state_together_and_load_into(tmp_path):
    calls = []
    ck = ms.Checkpoints(tmp_path)
    ck.bind(save=lambda p: open(os.path.join(p, "f.txt"), "w").write("x"), load=lambda p: calls.append(p))
    ck.save({"epoch": 3, "w": np.arange(3)}, step=3)
    back = ck.load()
    assert back["epoch"] == 3 and len(calls) == 1 and calls[0].endswith(os.path.join("step3", "files"))
    target = {"epoch": 0, "w": np.zeros(3, dtype=np.int64)}
    info = ck.load_into(target)
    assert info.step == 3 and target["epoch"] == 3 and list(target["w"]) == [0, 1, 2] and len(calls) == 2
    ck.close()


def test_bound_files_are_verified(tmp_path):
    ck = ms.Checkpoints(tmp_path)
    ck.bind(save=lambda p: open(os.path.join(p, "weights.bin"), "wb").write(bytes(range(256))), load=lambda p: "ok")
    info = ck.save(step=0)
    target = os.path.join(info.path, "files", "weights.bin")
    data = bytearray(open(target, "rb").read())
    data[10] ^= 0x01
    open(target, "wb").write(data)
    with pytest.raises(ms.CorruptCheckpointError, match=r"weights\.bin.*fails its checksum"):
        ck.load(0)
    assert ck.load(0, verify=False) == "ok"
    os.remove(target)
    with pytest.raises(ms.CorruptCheckpointError, match="missing"):
        ck.load(0)
    ck.close()


def test_a_failing_bound_save_commits_nothing_and_prunes_nothing(tmp_path):
    ck = ms.Checkpoints(tmp_path, keep_last=1)
    ck.save({"a": 1}, step=0)

    def broken(path):
        open(os.path.join(path, "half.bin"), "wb").write(b"half")
        raise RuntimeError("user save failed")

    ck.bind(save=broken)
    with pytest.raises(RuntimeError, match="user save failed"):
        ck.save({"a": 2}, step=1)
    assert [i.step for i in ck.list()] == [0]
    assert sorted(os.listdir(tmp_path)) == [".modelsafe-run.json", ".modelsafe.lock", "step0"]
    ck.close()


def test_links_written_by_a_bound_save_are_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    ck = ms.Checkpoints(tmp_path / "run")
    ck.bind(save=lambda p: os.symlink(secret, os.path.join(p, "link")))
    with pytest.raises(ms.StorageError, match="link"):
        ck.save(step=0)
    assert ck.list() == []
    ck.close()


def test_bound_save_runs_in_the_caller_even_when_async(tmp_path):
    import threading

    threads = []
    ck = ms.Checkpoints(tmp_path, async_save=True)
    ck.bind(save=lambda p: threads.append(threading.current_thread()) or open(os.path.join(p, "a"), "w").write("1"))
    ck.save({"w": np.ones(2)}, step=0)
    assert threads == [threading.main_thread()]  # snapshot semantics: the user's files are written before save returns
    assert ck.wait().step == 0
    ck.close()
