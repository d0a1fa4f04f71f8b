"""A saved state may only set what the rebuilt object itself has, with values of the kinds it has.

torch's ``load_state_dict`` of schedulers is ``self.__dict__.update(state)`` and an
optimizer takes saved param groups wholesale, so without a check a file could replace
``sched.step`` with any class it can name, or an ``lr`` with an object.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import modelsafe as ms

from craft import edit_manifest

RELU = {"ref": "torch.nn.ReLU"}  # a registered class: the file can name it, it must not land in state


def _objects(node, kind, found=None):
    found = [] if found is None else found
    if isinstance(node, dict):
        if node.get("object") == kind:
            found.append(node)
        for v in node.values():
            _objects(v, kind, found)
    elif isinstance(node, list):
        for v in node:
            _objects(v, kind, found)
    return found


def _training(scheduler="step"):
    model = nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    if scheduler == "sequential":
        a = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.5, total_iters=2)
        b = torch.optim.lr_scheduler.StepLR(opt, 3)
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [a, b], milestones=[2])
    else:
        sched = torch.optim.lr_scheduler.StepLR(opt, 3)
    model(torch.ones(1, 2)).sum().backward()
    opt.step()
    sched.step()
    return {"model": model, "optimizer": opt, "scheduler": sched}


def _hostile(tmp_path, kind, edit_state, scheduler="step"):
    p = tmp_path / f"{kind}.safetensors"
    ms.save(_training(scheduler), p)

    def edit(manifest):
        node = _objects(manifest["tree"], kind)[0]  # the outermost: children of a SequentialLR come later
        edit_state(node["state"])

    edit_manifest(p, edit)
    return p


def _add(key, value):
    return lambda state: state["dict"].append([key, value])


def _set(key, value):
    def edit(state):
        for pair in state["dict"]:
            if pair[0] == key:
                pair[1] = value

    return edit


@pytest.mark.parametrize("key", ["step", "get_lr", "get_last_lr", "optimizer", "load_state_dict", "__class__"])
def test_a_scheduler_state_cannot_set_what_the_scheduler_does_not_have(tmp_path, key):
    p = _hostile(tmp_path, "torch.lr_scheduler", _add(key, RELU))
    sched = ms.load(p)["scheduler"]
    assert type(sched) is torch.optim.lr_scheduler.StepLR
    assert all(v is not nn.ReLU for v in vars(sched).values()) and isinstance(sched.optimizer, torch.optim.SGD)
    sched.step()  # still the scheduler's own method
    target = _training()["scheduler"]
    ms.load_into({"scheduler": target}, p, select="scheduler")
    assert all(v is not nn.ReLU for v in vars(target).values()) and target.last_epoch == 1


def test_the_schedulers_inside_a_sequential_scheduler_are_checked_too(tmp_path):
    def edit(state):
        for pair in state["dict"]:
            if pair[0] == "_schedulers":
                for child in pair[1]:
                    child["dict"].append(["step", RELU])

    sched = ms.load(_hostile(tmp_path, "torch.lr_scheduler", edit, scheduler="sequential"))["scheduler"]
    assert all("step" not in vars(child) for child in sched._schedulers)


@pytest.mark.parametrize(
    "key, value",
    [("last_epoch", "x"), ("last_epoch", RELU), ("base_lrs", [RELU]), ("base_lrs", "abc"), ("_last_lr", [[{"float": 1.0}]]),
     ("step_size", {"dict": []}), ("_get_lr_called_within_step", 1)],
)
def test_a_scheduler_state_value_of_the_wrong_kind_is_refused(tmp_path, key, value):
    p = _hostile(tmp_path, "torch.lr_scheduler", _set(key, value))
    with pytest.raises(ms.CorruptCheckpointError, match=key):
        ms.load(p)
    sched = _training()["scheduler"]
    with pytest.raises(ms.IncompatibleStateError, match=key):
        ms.load_into({"scheduler": sched}, p, select="scheduler")
    assert type(sched.last_epoch) is int and all(type(v) is float for v in sched.base_lrs)


def _group_edit(key, value):
    def edit(state):
        (group,) = next(pair[1] for pair in state["dict"] if pair[0] == "param_groups")
        pairs = group["dict"]
        pairs[:] = [q for q in pairs if q[0] != key] + [[key, value]]

    return edit


@pytest.mark.parametrize("key, value", [("lr", RELU), ("lr", "0.1"), ("momentum", [{"float": 1.0}]), ("nesterov", 0), ("foo", RELU),
                                        ("foo", {"dict": [["a", 1]]})])
def test_an_optimizer_param_group_takes_only_values_of_the_kinds_the_optimizer_has(tmp_path, key, value):
    p = _hostile(tmp_path, "torch.optimizer", _group_edit(key, value))
    with pytest.raises(ms.CorruptCheckpointError, match=key):
        ms.load(p)
    opt = _training()["optimizer"]
    with pytest.raises(ms.IncompatibleStateError, match=key):
        ms.load_into({"optimizer": opt}, p, select="optimizer")
    assert opt.param_groups[0]["lr"] == 0.1 and "foo" not in opt.param_groups[0]


def test_plain_extra_group_keys_written_by_schedulers_still_load(tmp_path):
    p = _hostile(tmp_path, "torch.optimizer", _group_edit("swa_lr", {"float": 0.05}))
    assert ms.load(p)["optimizer"].param_groups[0]["swa_lr"] == 0.05


def test_optimizer_per_parameter_state_holds_only_tensors_and_numbers(tmp_path):
    def edit(state):
        for pair in state["dict"]:
            if pair[0] == "state":
                pair[1]["dict"][0][1]["dict"].append(["momentum_buffer2", RELU])

    with pytest.raises(ms.CorruptCheckpointError, match="momentum_buffer2"):
        ms.load(_hostile(tmp_path, "torch.optimizer", edit))


def test_a_grad_scaler_state_of_the_wrong_kind_is_refused(tmp_path):
    p = tmp_path / "scaler.safetensors"
    ms.save({"scaler": torch.amp.GradScaler("cpu")}, p)

    def edit(manifest):
        (node,) = _objects(manifest["tree"], "torch.grad_scaler")
        for pair in node["state"]["dict"]:
            if pair[0] == "scale":
                pair[1] = RELU

    edit_manifest(p, edit)
    with pytest.raises(ms.CorruptCheckpointError, match="scale"):
        ms.load(p)


def test_optimizer_hyper_parameters_in_the_recipe_are_plain_data(tmp_path):
    p = tmp_path / "defaults.safetensors"
    ms.save(_training(), p)

    def edit(manifest):
        node = _objects(manifest["tree"], "torch.optimizer")[0]
        node["recipe"]["kwargs"] = [[k, RELU if k == "dampening" else v] for k, v in node["recipe"]["kwargs"]]

    edit_manifest(p, edit)
    with pytest.raises(ms.CorruptCheckpointError, match="dampening"):
        ms.load(p)


@pytest.mark.parametrize("key, value", [("device", 5), ("device", "cuda:0"), ("device", "bogus"), ("init_scale", "big"),
                                        ("growth_interval", RELU), ("enabled", "yes")])
def test_grad_scaler_arguments_have_the_kinds_of_its_defaults(tmp_path, key, value):
    p = tmp_path / "scaler-args.safetensors"
    ms.save({"scaler": torch.amp.GradScaler("cpu")}, p)

    def edit(manifest):
        node = _objects(manifest["tree"], "torch.grad_scaler")[0]
        node["recipe"]["kwargs"] = [[k, value if k == key else v] for k, v in node["recipe"]["kwargs"]]

    edit_manifest(p, edit)
    with pytest.raises(ms.CorruptCheckpointError, match="GradScaler"):
        ms.load(p)
