"""Rebuilding a module allocates only what the file holds (plus a small, bounded extra).

A recipe names a class and its arguments; ``torch.nn.Linear(20000, 20000)`` is 584 bytes
of JSON and 1.6 GB of weights.  modelsafe builds on the meta device, checks the file's
state against it, and materializes only what the file holds: a file that lacks the
weights, or holds a malformed or mismatched state, is refused before any large
allocation.  The hostile loads run in a child process under RLIMIT_AS, so an
allocation would fail there instead of swapping the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import modelsafe as ms
from modelsafe.adapters.torch import objects as torch_objects

from craft import edit_manifest

BIG = 20000  # Linear(BIG, BIG): 1.6 GB of float32 weights


def _module_file(tmp_path, name, edit_node, model=None):
    p = tmp_path / f"{name}.safetensors"
    ms.save({"m": model if model is not None else nn.Linear(2, 3)}, p)

    def edit(manifest):
        edit_node(manifest["tree"]["dict"][0][1])

    edit_manifest(p, edit)
    return str(p)


def _huge(node):
    node["recipe"]["kwargs"] = [["in_features", BIG], ["out_features", BIG]]


def _no_state(node):
    _huge(node)
    del node["state"]


def _state(value):
    def edit(node):
        _huge(node)
        node["state"] = value

    return edit


HOSTILE = {
    "no-state": _no_state,
    "state-not-a-dict": _state("junk"),
    "state-a-list": _state([1, 2]),
    "state-empty": _state({"dict": []}),
    "state-small-weights": lambda node: _huge(node),  # the file's 2x3 weights against a 20000x20000 recipe
    "state-unknown-node": _state({"bogus": 1}),
}

RUNNER = textwrap.dedent(
    """
    import json, resource, sys
    import torch, modelsafe as ms
    import modelsafe.adapters.torch

    def vm_bytes():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024

    limit = vm_bytes() + (400 << 20)  # what is mapped now, plus 400 MiB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    out = {}
    for name, path in json.loads(sys.argv[1]).items():
        try:
            ms.load(path)
            out[name] = "LOADED"
        except ms.ModelsafeError as exc:
            out[name] = type(exc).__name__ + ": " + str(exc)[:400]
        except BaseException as exc:
            out[name] = "FOREIGN " + type(exc).__name__ + ": " + str(exc)[:400]
    print(json.dumps(out))
    """
)


@ms.rebuildable(name="tests.bounds.Box")
class Box:
    def __init__(self, payload):
        self.payload = payload


def _routed_files(tmp_path):
    """Nodes of other kinds whose recipe names torch.nn.Linear(20000, 20000): each codec must refuse the class."""
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    objects = {"rebuildable": Box(1), "torch.optimizer": opt, "torch.lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, 2),
               "torch.grad_scaler": torch.amp.GradScaler("cpu")}
    files = {}
    for kind, obj in objects.items():
        p = tmp_path / f"routed-{kind}.safetensors"
        ms.save({"model": model, "x": obj}, p)

        def edit(manifest, kind=kind):
            node = next(v for k, v in manifest["tree"]["dict"] if k == "x")
            assert node["object"] == kind
            node["recipe"] = {"name": "torch.nn.Linear", "args": [BIG, BIG], "kwargs": []}

        edit_manifest(p, edit)
        files[f"routed-{kind}"] = str(p)
    return files


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_hostile_module_recipes_are_refused_before_allocating(tmp_path):
    files = {name: _module_file(tmp_path, name, edit) for name, edit in HOSTILE.items()}
    files.update(_routed_files(tmp_path))
    files["control-small"] = _module_file(tmp_path, "control", lambda node: None)
    out = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(files)], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout.strip().splitlines()[-1])
    assert results.pop("control-small") == "LOADED"
    for name, outcome in results.items():
        assert outcome.startswith(("CorruptCheckpointError", "IncompatibleStateError")), (name, outcome)
        assert "allocate memory" not in outcome, (name, outcome)  # refused, not stopped by the limit
    assert "does not hold" in results["no-state"] and "ms.load_into" in results["no-state"]
    assert "20000" in results["state-small-weights"]
    assert all("belongs" in outcome for name, outcome in results.items() if name.startswith("routed-"))


def test_a_small_module_saved_without_state_is_still_rebuilt(tmp_path):
    p = _module_file(tmp_path, "small", lambda node: node.pop("state"))
    m = ms.load(p)["m"]
    assert isinstance(m, nn.Linear) and m.weight.shape == (3, 2) and not m.weight.is_meta


def test_unsaved_tensors_share_one_budget_per_load(tmp_path, monkeypatch):
    """Many small stateless modules cannot add up to a large allocation: the bound is per load."""
    one = (10 * 10 + 10) * 4  # Linear(10, 10) in float32
    monkeypatch.setattr(torch_objects, "MAX_UNSAVED_BYTES", 3 * one)
    p = tmp_path / "many.safetensors"
    ms.save({"m": [nn.Linear(10, 10) for _ in range(4)]}, p)

    def edit(manifest):
        for module in manifest["tree"]["dict"][0][1]:
            module.pop("state")

    edit_manifest(p, edit)
    with pytest.raises(ms.CorruptCheckpointError, match="does not hold"):
        ms.load(p)
    monkeypatch.setattr(torch_objects, "MAX_UNSAVED_BYTES", 4 * one)
    assert len(ms.load(p)["m"]) == 4


def test_a_state_of_another_dtype_kind_is_a_mismatch(tmp_path):
    p = tmp_path / "ints.safetensors"
    m = nn.Linear(2, 3)
    ms.save({"m": m, "w": torch.zeros(3, 2, dtype=torch.int64)}, p)

    def edit(manifest):
        node = manifest["tree"]["dict"][0][1]
        node["state"]["dict"][0][1] = {"tensor": "w"}

    edit_manifest(p, edit)
    with pytest.raises(ms.IncompatibleStateError, match="weight"):
        ms.load(p)


def test_a_module_whose_constructor_needs_real_values_is_built_for_real_once_checked(tmp_path):
    """A registered class that cannot be built on meta still loads (registration trusts its constructor)."""
    back = ms.load(_module_file(tmp_path, "item", lambda node: None, model=NeedsReal(3)))["m"]
    assert back.limit == pytest.approx(3 ** 0.5) and not back.fc.weight.is_meta


@ms.rebuildable(name="tests.bounds.NeedsReal")
class NeedsReal(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.fc = nn.Linear(n, n)
        self.limit = float(torch.tensor(float(n)).sqrt().item())  # fails on the meta device
