"""Gluon: save_parameters / load_parameters equivalents, rebuilt blocks, Trainer state, security."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

import modelsafe as ms
from modelsafe.errors import IncompatibleStateError, MissingRecipeError, UnknownClassError, UnsupportedObjectError

import craft  # tests/craft.py: rewrites a file's manifest, re-sealed

nn = gluon.nn
X = mx.nd.array(np.random.RandomState(0).rand(2, 20))

MLP_SOURCE = '''
import modelsafe as ms
from mxnet.gluon import nn


@ms.rebuildable(name="tests.MLP")
class MLP(nn.Block):
    def __init__(self, hidden=256, out=10, **kwargs):
        super().__init__(**kwargs)
        self.hidden = nn.Dense(hidden, activation="relu")
        self.output = nn.Dense(out)

    def forward(self, x):
        return self.output(self.hidden(x))
'''


@pytest.fixture
def mlp_module(tmp_path, monkeypatch):
    (tmp_path / "mlp_models.py").write_text(MLP_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    import mlp_models

    return importlib.reload(mlp_models)


def trained(net: gluon.Block) -> gluon.Block:
    net.initialize(mx.init.Normal(0.5))
    net(X)  # deferred shapes
    return net


def same_outputs(a: gluon.Block, b: gluon.Block) -> bool:
    return a(X).asnumpy().tobytes() == b(X).asnumpy().tobytes()


def test_a_rebuildable_block_is_rebuilt_in_another_process_with_identical_outputs(tmp_path, mlp_module):
    net = trained(mlp_module.MLP(hidden=32, out=4))
    ms.save(net, tmp_path / "mlp.ms")
    np.save(tmp_path / "x.npy", X.asnumpy())
    script = textwrap.dedent("""
        import sys, json, numpy as np, mxnet as mx, modelsafe as ms
        sys.path.insert(0, sys.argv[1])
        import mlp_models
        net = ms.load(sys.argv[2])
        y = net(mx.nd.array(np.load(sys.argv[3])))
        print(json.dumps({"type": type(net).__name__, "out": y.asnumpy().tobytes().hex()}))
    """)
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path), str(tmp_path / "mlp.ms"), str(tmp_path / "x.npy")],
                         capture_output=True, text=True, timeout=300, env=dict(os.environ, MXNET_SUBPROCESS="1"))
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got == {"type": "MLP", "out": net(X).asnumpy().tobytes().hex()}


def test_ms_build_and_sequentials_of_built_in_layers_are_rebuilt(tmp_path):
    seq = nn.HybridSequential()
    seq.add(ms.build(nn.Dense, 8, activation="relu"), ms.build(nn.Dropout, 0.5), ms.build(nn.Dense, 3))
    trained(seq)
    ms.save({"model": seq, "epoch": 3}, tmp_path / "seq.ms")
    loaded = ms.load(tmp_path / "seq.ms")
    assert loaded["epoch"] == 3 and type(loaded["model"]) is nn.HybridSequential
    assert [type(c) for c in loaded["model"]] == [nn.Dense, nn.Dropout, nn.Dense]
    assert same_outputs(loaded["model"], seq)


def test_a_block_without_a_recipe_names_load_into(tmp_path):
    class Plain(nn.Block):
        def __init__(self):
            super().__init__()
            self.fc = nn.Dense(2)

        def forward(self, x):
            return self.fc(x)

    ms.save(trained(Plain()), tmp_path / "plain.ms")
    with pytest.raises(MissingRecipeError, match="ms.load_into"):
        ms.load(tmp_path / "plain.ms")


def test_uninitialized_parameters_are_refused_when_saving(tmp_path):
    with pytest.raises(UnsupportedObjectError, match="initialize"):
        ms.save(nn.Dense(3), tmp_path / "x.ms")


def test_load_into_a_clone_built_from_code_as_load_parameters(tmp_path, mlp_module):
    net = trained(mlp_module.MLP(hidden=16, out=3))
    ms.save(net, tmp_path / "mlp.ms")
    clone = mlp_module.MLP(hidden=16, out=3)  # not initialized, shapes deferred: as load_parameters accepts
    report = ms.load_into(clone, tmp_path / "mlp.ms")
    assert report.ok and sorted(report.loaded) == sorted(k for k in net._collect_params_with_prefix())
    assert same_outputs(clone, net)


def test_load_into_from_a_plain_dict_of_structured_names(tmp_path, mlp_module):
    net = trained(mlp_module.MLP(hidden=16, out=3))
    arrays = {k: p.data() for k, p in net._collect_params_with_prefix().items()}  # what save_parameters writes
    ms.save(arrays, tmp_path / "params.ms")
    clone = trained(mlp_module.MLP(hidden=16, out=3))
    assert not same_outputs(clone, net)
    ms.load_into(clone, tmp_path / "params.ms")
    assert same_outputs(clone, net)


def test_collect_params_saves_and_loads_by_full_names(tmp_path, mlp_module):
    with mx.name.Prefix("mlp_"):
        net = trained(mlp_module.MLP(hidden=16, out=3))
    ms.save(net.collect_params(), tmp_path / "params.ms")
    saved = ms.load(tmp_path / "params.ms")
    assert list(saved) == list(net.collect_params().keys())
    with mx.name.Prefix("mlp_"):
        clone = mlp_module.MLP(hidden=16, out=3)  # same names, as a clone built by the same code in a new process
    clone.collect_params().initialize()
    ms.load_into(clone.collect_params(), tmp_path / "params.ms")
    assert same_outputs(clone, net)


def test_strict_load_into_writes_nothing_when_a_shape_differs(tmp_path, mlp_module):
    ms.save(trained(mlp_module.MLP(hidden=16, out=3)), tmp_path / "mlp.ms")
    other = trained(mlp_module.MLP(hidden=16, out=5))
    before = {k: p.data().asnumpy().copy() for k, p in other._collect_params_with_prefix().items()}
    with pytest.raises(IncompatibleStateError) as info:
        ms.load_into(other, tmp_path / "mlp.ms")
    assert {m.key for m in info.value.report.mismatched} == {"output.weight", "output.bias"}
    assert all((p.data().asnumpy() == before[k]).all() for k, p in other._collect_params_with_prefix().items())
    report = ms.load_into(other, tmp_path / "mlp.ms", strict=False)
    assert sorted(report.loaded) == ["hidden.bias", "hidden.weight"]


def test_select_and_rename_reuse_the_first_layers(tmp_path, mlp_module):
    net = trained(mlp_module.MLP(hidden=16, out=3))
    ms.save(net, tmp_path / "mlp.ms")
    seq = nn.Sequential()
    seq.add(nn.Dense(16, activation="relu"), nn.Dense(7))
    trained(seq)
    report = ms.load_into(seq, tmp_path / "mlp.ms", select="hidden.", rename={"hidden.": "0."})
    assert sorted(report.loaded) == ["0.bias", "0.weight"]
    assert (seq[0].weight.data().asnumpy() == net.hidden.weight.data().asnumpy()).all()


def step(net: gluon.Block, trainer: gluon.Trainer) -> None:
    with autograd.record():
        loss = (net(X) ** 2).sum()
    loss.backward()
    trainer.step(X.shape[0])


def test_trainer_state_round_trips_and_a_resumed_step_equals_an_uninterrupted_one(tmp_path, mlp_module):
    net = trained(mlp_module.MLP(hidden=8, out=2))
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.01})
    step(net, trainer)
    step(net, trainer)
    ms.save({"model": net, "trainer": trainer}, tmp_path / "ckpt.ms")
    assert ms.load(tmp_path / "ckpt.ms")["trainer"]["num_update"] == 2

    clone = mlp_module.MLP(hidden=8, out=2)
    clone.initialize()
    clone(X)
    clone_trainer = gluon.Trainer(clone.collect_params(), "adam", {"learning_rate": 0.5})
    ms.load_into({"model": clone, "trainer": clone_trainer}, tmp_path / "ckpt.ms")
    assert clone_trainer.learning_rate == 0.01
    step(net, trainer)
    step(clone, clone_trainer)
    assert same_outputs(clone, net)


def test_a_trainer_state_of_another_optimizer_is_refused(tmp_path, mlp_module):
    net = trained(mlp_module.MLP(hidden=8, out=2))
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.01})
    step(net, trainer)
    ms.save({"trainer": trainer}, tmp_path / "ckpt.ms")
    sgd = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.1, "momentum": 0.9})
    with pytest.raises(IncompatibleStateError, match="adam"):
        ms.load_into({"trainer": sgd}, tmp_path / "ckpt.ms")


def _retarget(path, name: str, args: list) -> None:
    def edit(manifest: dict) -> None:
        def visit(node):
            if isinstance(node, dict):
                if isinstance(node.get("recipe"), dict):
                    node["recipe"].update(name=name, args=args, kwargs=[])
                for v in node.values():
                    visit(v)
            elif isinstance(node, list):
                for v in node:
                    visit(v)

        visit(manifest["tree"])

    craft.edit_manifest(path, edit)


def test_a_file_naming_an_unregistered_callable_calls_nothing(tmp_path):
    net = ms.build(nn.Dense, 2, in_units=3)
    net.initialize()
    ms.save(net, tmp_path / "x.ms")
    sentinel = tmp_path / "ran"
    _retarget(tmp_path / "x.ms", "os:system", [f"touch {sentinel}"])
    with pytest.raises(UnknownClassError, match="Nothing was imported or called"):
        ms.load(tmp_path / "x.ms")
    assert not sentinel.exists()


def test_a_recipe_asking_for_huge_layers_allocates_nothing(tmp_path):
    """Building a Gluon block allocates no parameter memory; the file's arrays are checked before they are set."""
    net = ms.build(nn.Dense, 2, in_units=3)
    net.initialize()
    ms.save(net, tmp_path / "x.ms")
    _retarget(tmp_path / "x.ms", "mxnet.gluon.nn.Dense", [1 << 40])
    with pytest.raises(IncompatibleStateError, match="weight"):
        ms.load(tmp_path / "x.ms")


def test_save_parameters_files_convert_and_load_into_a_block(tmp_path, mlp_module):
    """MXNet's own .params (read without MXNet, nothing executed) -> modelsafe -> load_into a clone."""
    from modelsafe.convert import convert

    net = trained(mlp_module.MLP(hidden=16, out=3))
    net.save_parameters(str(tmp_path / "mlp.params"))
    convert(tmp_path / "mlp.params", tmp_path / "mlp.safetensors", framework="mxnet")
    loaded = ms.load(tmp_path / "mlp.safetensors")
    assert all(isinstance(v, mx.nd.NDArray) for v in loaded.values())
    clone = mlp_module.MLP(hidden=16, out=3)
    assert ms.load_into(clone, tmp_path / "mlp.safetensors").ok
    assert same_outputs(clone, net)


def test_children_under_a_layer_that_is_not_a_sequential_are_refused(tmp_path):
    from modelsafe.errors import CorruptCheckpointError

    net = ms.build(nn.Dense, 2, in_units=3)
    net.initialize()
    ms.save(net, tmp_path / "x.ms")

    def edit(manifest: dict) -> None:
        manifest["tree"]["children"] = [{"recipe": {"name": "mxnet.gluon.nn.Dense", "args": [2], "kwargs": []}}]

    craft.edit_manifest(tmp_path / "x.ms", edit)
    with pytest.raises(CorruptCheckpointError, match="only nn.Sequential"):
        ms.load(tmp_path / "x.ms")
