"""Async saves: snapshot semantics, errors never swallowed, pending saves finish at exit."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import modelsafe as ms
from modelsafe import checkpoints as checkpoints_mod
from modelsafe.async_save import PendingSave, snapshot
from modelsafe.tree import flatten

torch = pytest.importorskip("torch")


def hold_background_writes(monkeypatch) -> threading.Event:
    """Make background writes wait until the returned event is set."""
    gate = threading.Event()
    real = checkpoints_mod.write_shards

    def slow_write(*args, **kwargs):
        assert gate.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoints_mod, "write_shards", slow_write)
    return gate


def test_save_returns_a_handle_and_wait_gives_the_info(tmp_path):
    ck = ms.Checkpoints(tmp_path, async_save=True, keep_last=2)
    handles = [ck.save({"w": torch.full((100,), float(i))}, step=i) for i in range(4)]
    assert all(isinstance(h, PendingSave) for h in handles)
    last = ck.wait()
    assert last.step == 3 and handles[-1].result().step == 3 and handles[0].done()
    assert [i.step for i in ck.list()] == [2, 3]
    ck.close()


def test_tensors_changed_right_after_save_do_not_leak_in(tmp_path, monkeypatch):
    gate = hold_background_writes(monkeypatch)
    model = torch.nn.Linear(50, 50)
    numpy_state = np.arange(10, dtype=np.float32)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    ck = ms.Checkpoints(tmp_path, async_save=True)
    pending = ck.save({"model": model.state_dict(), "np": numpy_state}, step=0)
    with torch.no_grad():  # the training loop goes on before the write even starts
        model.weight.add_(100.0)
        model.bias.zero_()
    numpy_state[:] = -1
    assert not pending.done()
    gate.set()
    pending.result()
    back = ck.load()
    assert torch.equal(back["model"]["weight"], expected["weight"])
    assert torch.equal(back["model"]["bias"], expected["bias"])
    assert np.array_equal(back["np"], np.arange(10, dtype=np.float32))
    ck.close()


def test_snapshot_copies_keep_dtypes_and_shapes():
    t = torch.arange(12, dtype=torch.bfloat16).reshape(3, 4).t()  # non-contiguous bfloat16
    fl = snapshot(flatten({"t": t, "b": b"raw", "n": np.ones((2, 2), np.int16)}))
    by_name = {p.name: p for p in fl.payloads}
    assert by_name["t"].dtype == "bfloat16" and by_name["t"].shape == (4, 3)
    assert bytes(by_name["t"].host_bytes()) == bytes(t.contiguous().view(torch.int16).numpy().tobytes())
    assert by_name["t"].framework == "torch" and bytes(by_name["b"].host_bytes()) == b"raw"
    t.fill_(0)  # the copy is the snapshot's own
    assert bytes(by_name["t"].host_bytes()) != bytes(t.contiguous().view(torch.int16).numpy().tobytes())


def test_a_failing_background_write_surfaces_on_wait(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    ck = ms.Checkpoints(tmp_path, async_save=True)
    ck.save({"w": np.zeros(3)}, step=0).result()
    monkeypatch.setattr(checkpoints_mod, "write_shards", broken)
    pending = ck.save({"w": np.ones(3)}, step=1)
    with pytest.raises(ms.StorageError, match="No space left") as err:
        ck.wait()
    assert "step1" in str(err.value)
    ck.wait()  # reported once
    assert [i.step for i in ck.list()] == [0]
    assert not [n for n in os.listdir(tmp_path) if "modelsafe-tmp" in n]
    assert pending.done() and isinstance(pending.exception(), ms.StorageError)
    ck.close()


def test_a_failing_background_write_surfaces_on_the_next_save(tmp_path, monkeypatch):
    calls = []
    real = checkpoints_mod.write_shards

    def fail_once(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("disk went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoints_mod, "write_shards", fail_once)
    ck = ms.Checkpoints(tmp_path, async_save=True)
    ck.save({"w": np.zeros(3)}, step=0)
    with pytest.raises(RuntimeError, match="disk went away"):
        ck.save({"w": np.zeros(3)}, step=1)
    ck.save({"w": np.zeros(3)}, step=2)  # the error was reported; saving goes on
    assert ck.wait().step == 2
    ck.close()


def test_a_failure_seen_through_the_handle_is_not_raised_twice(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoints_mod, "write_shards", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("bad")))
    ck = ms.Checkpoints(tmp_path, async_save=True)
    pending = ck.save({"w": np.zeros(3)}, step=0)
    with pytest.raises(RuntimeError, match="bad"):
        pending.result()
    assert ck.wait() is None  # already reported through the handle
    ck.close()


def test_retention_is_applied_after_each_background_commit(tmp_path):
    ck = ms.Checkpoints(tmp_path, async_save=True, keep_last=1, keep_best=1, monitor="loss")
    for step, loss in enumerate([0.1, 0.5, 0.4, 0.3]):
        ck.save({"w": np.full(10, step)}, step=step, metrics={"loss": loss})
    ck.wait()
    assert [i.step for i in ck.list()] == [0, 3]
    ck.close()


def test_pending_saves_finish_at_interpreter_exit(tmp_path):
    code = f"""
import time, numpy as np, modelsafe as ms
from modelsafe import checkpoints as c
real = c.write_shards
def slow(*a, **k):
    time.sleep(1.0)
    return real(*a, **k)
c.write_shards = slow
ck = ms.Checkpoints({str(tmp_path)!r}, async_save=True)
ck.save({{"w": np.arange(5)}}, step=7)
print("returned", flush=True)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "returned" in proc.stdout
    ck = ms.Checkpoints(tmp_path)
    assert ck.latest().step == 7 and list(ck.load()["w"]) == [0, 1, 2, 3, 4]


def test_a_failure_at_exit_is_reported_on_stderr(tmp_path):
    code = f"""
import numpy as np, modelsafe as ms
from modelsafe import checkpoints as c
def broken(*a, **k):
    raise OSError(28, "No space left on device")
c.write_shards = broken
ck = ms.Checkpoints({str(tmp_path)!r}, async_save=True)
ck.save({{"w": np.arange(5)}}, step=7)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "background checkpoint save failed" in proc.stderr and "No space left" in proc.stderr


def test_plain_tree_copy_keeps_types_ties_and_metadata():
    from collections import OrderedDict

    from modelsafe.async_save import copy_plain_tree

    model = torch.nn.Linear(3, 3)
    sd = model.state_dict()
    weight = torch.randn(4, 4)
    param = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    grad = torch.zeros(2, requires_grad=True)
    tree = {"sd": sd, "tied": [weight, weight, weight.t()], "p": param, "g": grad, "n": np.arange(3),
            "t": (1, "x", None, b"raw"), 3: [2.5], "empty": torch.empty(0)}
    before = weight.clone()
    copy = copy_plain_tree(tree)
    assert type(copy["sd"]) is OrderedDict and copy["sd"]._metadata == sd._metadata
    assert copy["sd"]._metadata is not sd._metadata
    assert copy["tied"][0] is copy["tied"][1] and copy["tied"][0] is not weight  # one copy per view
    assert copy["tied"][2].data_ptr() != copy["tied"][0].data_ptr()  # a different view: its own copy
    assert type(copy["p"]) is torch.nn.Parameter and copy["p"].requires_grad is False
    assert copy["g"].requires_grad and copy["t"] == (1, "x", None, b"raw") and copy[3] == [2.5]
    weight.add_(1)
    assert torch.equal(copy["tied"][0], before)
    copy["n"][0] = 99
    assert tree["n"][0] == 0


def test_trees_with_other_objects_take_the_flatten_and_snapshot_path(tmp_path, monkeypatch):
    from modelsafe.async_save import copy_plain_tree

    model = torch.nn.Linear(2, 2)
    assert copy_plain_tree({"model": model}) is None
    assert copy_plain_tree({"c": torch.ones(2, dtype=torch.complex64).conj()}) is None
    assert copy_plain_tree({("tuple", "key"): torch.ones(1)}) is None
    gate = hold_background_writes(monkeypatch)
    ck = ms.Checkpoints(tmp_path, async_save=True)
    layer = torch.nn.Linear(3, 3)
    expected = layer.weight.detach().clone()
    nested = {"layer": layer, "scale": torch.ones(2)}
    pending = ck.save({"state": nested, "extra": np.ones(2)}, step=0)
    with torch.no_grad():
        layer.weight.mul_(5)
        nested["scale"].add_(1)
    gate.set()
    pending.result()
    back = ck.load()
    assert float(back["state"]["scale"][0]) == 1.0
    assert isinstance(back["state"]["layer"], torch.nn.Linear) and torch.equal(back["state"]["layer"].weight, expected)
    ck.close()


def test_a_state_nothing_can_store_fails_on_wait_and_leaves_nothing(tmp_path):
    ck = ms.Checkpoints(tmp_path, async_save=True)
    with pytest.raises(ms.UnsupportedObjectError):
        ck.save({"x": object()}, step=0)  # not a plain tree: flattened (and refused) in the caller
    assert ck.list() == [] and not [n for n in os.listdir(tmp_path) if "modelsafe-tmp" in n]
    ck.close()
