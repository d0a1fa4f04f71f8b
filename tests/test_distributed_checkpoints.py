"""Background sharded saves of a run: ``ms.Checkpoints(dir, async_save=True).save(state, distributed=True)``.

One process without a process group (DCP runs as world size 1); the 2-rank case is a
block of the torchrun launch of tests/test_distributed.py (``run_async_checkpoints``
in tests/dist_scripts/fsdp_worker.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402

import modelsafe as ms  # noqa: E402
from modelsafe.async_save import PendingSave  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")

SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src")


def _state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return {"model": {"w": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int16)}, "lr": 0.5, "note": "x"}


def _hold_writes(monkeypatch) -> threading.Event:
    """Make the background DCP writes wait until the returned event is set."""
    from modelsafe.distributed.storage import ModelsafeWriter

    gate = threading.Event()
    real = ModelsafeWriter.write_data

    def held(self, plan, planner):
        assert gate.wait(60)
        return real(self, plan, planner)

    monkeypatch.setattr(ModelsafeWriter, "write_data", held)
    return gate


def _leftovers(directory) -> list[str]:
    return [n for n in os.listdir(directory) if "tmp" in n]


def test_save_returns_a_pending_save_and_wait_commits_the_latest(tmp_path):
    ck = ms.Checkpoints(str(tmp_path), async_save=True, keep_last=2)
    handles = [ck.save(_state(i), distributed=True) for i in range(3)]  # no wait between them
    assert all(isinstance(h, PendingSave) for h in handles)
    assert [(h.name, h.step) for h in handles] == [("step0", 0), ("step1", 1), ("step2", 2)]  # one past the latest
    info = ck.wait()
    assert (info.name, info.step) == ("step2", 2) and handles[-1].result() == info and all(h.done() for h in handles)
    assert [i.name for i in ck.list()] == ["step1", "step2"]
    latest = ms.load(str(tmp_path) + "@latest")
    assert torch.equal(latest["model"]["w"], _state(2)["model"]["w"]) and latest["lr"] == 0.5
    ck.close()


def test_changes_after_save_returns_do_not_leak_into_the_checkpoint(tmp_path, monkeypatch):
    gate = _hold_writes(monkeypatch)
    module = torch.nn.Linear(4, 2)
    expected_module = {k: v.clone() for k, v in module.state_dict().items()}
    state = {**_state(), "module": module}  # a Stateful object: saved by its state_dict
    ck = ms.Checkpoints(str(tmp_path), async_save=True)
    pending = ck.save(state, step=0, distributed=True)
    with torch.no_grad():  # training goes on before the write has even started
        state["model"]["w"].add_(100.0)
        state["model"]["b"].zero_()
        module.weight.fill_(7.0)
    state["lr"] = 0.0
    state["model"]["extra"] = torch.ones(1)
    assert not pending.done()
    gate.set()
    assert pending.wait().step == 0
    saved = ms.load(ck.latest().path)
    expected = _state()
    assert torch.equal(saved["model"]["w"], expected["model"]["w"]) and torch.equal(saved["model"]["b"], expected["model"]["b"])
    assert set(saved["model"]) == {"w", "b"} and saved["lr"] == 0.5
    assert all(torch.equal(saved["module"][k], v) for k, v in expected_module.items())
    ck.close()


def test_a_failed_background_save_is_raised_by_wait_once_and_leaves_nothing(tmp_path):
    ck = ms.Checkpoints(str(tmp_path), async_save=True)
    ck.save(_state(), step=0, distributed=True).wait()
    pending = ck.save({**_state(), "bad": {1, object()}}, step=1, distributed=True)  # fails in the background
    with pytest.raises(ms.UnsupportedObjectError, match="not storable"):
        ck.wait()
    ck.wait()  # reported once
    assert isinstance(pending.exception(), ms.UnsupportedObjectError)
    assert [i.step for i in ck.list()] == [0] and not _leftovers(tmp_path)
    assert ck.save(_state(), step=1, distributed=True).wait().step == 1  # the run goes on
    ck.close()


def test_a_failed_background_save_is_raised_by_the_next_save(tmp_path):
    ck = ms.Checkpoints(str(tmp_path), async_save=True)
    ck.save({**_state(), "bad": {1, object()}}, step=0, distributed=True)
    with pytest.raises(ms.UnsupportedObjectError):
        ck.save(_state(), step=1, distributed=True)
    assert ck.list() == [] and not _leftovers(tmp_path)
    assert ck.save(_state(), step=1, distributed=True).wait().step == 1
    ck.close()


def test_a_failure_seen_through_the_handle_is_not_raised_again_but_close_raises_an_unseen_one(tmp_path):
    ck = ms.Checkpoints(str(tmp_path), async_save=True)
    pending = ck.save({**_state(), "bad": {1, object()}}, step=0, distributed=True)
    with pytest.raises(ms.UnsupportedObjectError):
        pending.result()
    assert ck.wait() is None
    ck.save({**_state(), "bad": {1, object()}}, step=0, distributed=True)
    with pytest.raises(ms.UnsupportedObjectError):
        ck.close()


def test_retention_and_best_after_background_commits(tmp_path):
    ck = ms.Checkpoints(str(tmp_path), async_save=True, keep_last=1, keep_best=1, monitor="loss")
    for step, loss in enumerate([0.1, 0.5, 0.4, 0.3]):
        ck.save(_state(step), step=step, metrics={"loss": loss}, distributed=True)
    ck.wait()
    assert [i.step for i in ck.list()] == [0, 3] and ck.best().step == 0
    best = ms.load(str(tmp_path) + "@best")
    assert torch.equal(best["model"]["w"], _state(0)["model"]["w"])
    ck.close()


def test_a_refused_save_raises_in_save_and_starts_nothing(tmp_path):
    ck = ms.Checkpoints(str(tmp_path), async_save=True, name="last")
    ck.save(_state(), step=0, distributed=True)
    with pytest.raises(ms.RunConflictError, match="last"):  # waits for step 0, then sees the name taken
        ck.save({"other": torch.ones(1)}, step=1, distributed=True)
    assert ck.wait().step == 0
    assert [(i.name, i.step) for i in ck.list()] == [("last", 0)] and not _leftovers(tmp_path)
    with pytest.raises(ms.InvalidArgumentError, match="dict"):
        ck.save([torch.ones(1)], step=2, distributed=True)
    with pytest.raises(ms.InvalidArgumentError, match="metadata"):
        ck.save(_state(), step=2, distributed=True, metadata={"a": "b"})
    ck.close()


def test_resume_from_a_background_save_in_one_process(tmp_path):
    ck = ms.Checkpoints(str(tmp_path), async_save=True)
    ck.save(_state(3), step=5, distributed=True)
    ck.close()
    fresh = {"model": {"w": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.int16)}, "lr": 0.0, "note": ""}
    run = ms.Checkpoints(str(tmp_path))
    ms.distributed.load_into(fresh, run.latest().path)
    assert torch.equal(fresh["model"]["w"], _state(3)["model"]["w"]) and fresh["lr"] == 0.5
    plain = {"model": {"w": torch.zeros(3, 4), "b": torch.zeros(5, dtype=torch.int16)}}
    info = run.load_into(plain, strict=False)
    assert info.step == 5 and torch.equal(plain["model"]["w"], _state(3)["model"]["w"])


def test_pending_sharded_saves_finish_at_interpreter_exit(tmp_path):
    code = f"""
import time, torch, modelsafe as ms
from modelsafe.distributed.storage import ModelsafeWriter
real = ModelsafeWriter.write_data
def slow(self, plan, planner):
    time.sleep(1.0)
    return real(self, plan, planner)
ModelsafeWriter.write_data = slow
ck = ms.Checkpoints({str(tmp_path)!r}, async_save=True)
ck.save({{"w": torch.arange(5)}}, step=7, distributed=True)
print("returned", flush=True)
"""
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "returned" in proc.stdout
    ck = ms.Checkpoints(str(tmp_path))
    assert ck.latest().step == 7 and ms.load(ck.latest().path)["w"].tolist() == [0, 1, 2, 3, 4]


def test_background_saves_of_two_runs_interleaved(tmp_path):
    # they take the background group in the order they were started: none waits for one that comes later
    a = ms.Checkpoints(str(tmp_path / "a"), async_save=True, keep_last=1)
    b = ms.Checkpoints(str(tmp_path / "b"), async_save=True)
    for step in range(3):
        a.save(_state(step), step=step, distributed=True)
        b.save(_state(10 + step), step=step, distributed=True)
    assert b.wait().step == 2 and a.wait().step == 2
    assert [i.step for i in a.list()] == [2] and [i.step for i in b.list()] == [0, 1, 2]
    assert torch.equal(ms.load(b.info(1).path)["model"]["w"], _state(11)["model"]["w"])
    a.close()
    b.close()


def test_ms_distributed_save_in_the_background_copies_first_and_raises_on_wait(tmp_path, monkeypatch):
    # the same copy and writer thread as a run's background saves
    gate = _hold_writes(monkeypatch)
    state = _state()
    handle = ms.distributed.save(state, str(tmp_path / "ckpt"), async_save=True)
    state["model"]["w"].zero_()
    assert not handle.done()
    gate.set()
    handle.wait()
    assert torch.equal(ms.load(str(tmp_path / "ckpt"))["model"]["w"], _state()["model"]["w"])
    bad = ms.distributed.save({**_state(), "bad": {1, object()}}, str(tmp_path / "bad"), async_save=True)
    with pytest.raises(ms.UnsupportedObjectError):
        bad.wait()
    assert sorted(os.listdir(tmp_path)) in (["ckpt"], [".modelsafe.lock", "ckpt"])
