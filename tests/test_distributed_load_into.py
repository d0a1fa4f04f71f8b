"""ms.load_into of a lone module from a sharded (``ms.distributed``) checkpoint, in one process.

A sharded checkpoint's tree is ``{"model": <state dict>, "optim": ...}``, so a module target
names its part with ``select="model."`` and loads as the dict target ``{"model": module}`` does.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

import modelsafe as ms  # noqa: E402

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without torch.distributed")


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


def _same(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(sharded checkpoint path, the trained source model): model + Adam state, saved without a process group."""
    model = _net(0)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    path = str(tmp_path_factory.mktemp("dist") / "ckpt")
    ms.distributed.save({"model": model.state_dict(), "optim": opt.state_dict()}, path)
    return path, model


def test_module_target_with_select_loads_the_selected_part(saved):
    path, src = saved
    target = _net(1)
    assert not _same(target, src)
    report = ms.load_into(target, path, select="model.")
    assert report.ok and sorted(report.loaded) == ["model.0.bias", "model.0.weight", "model.2.bias", "model.2.weight"]
    assert _same(target, src)


def test_module_target_loads_as_the_dict_target_does(saved):
    path, src = saved
    by_module, by_dict = _net(1), _net(1)
    module_report = ms.load_into(by_module, path, select="model.")
    dict_report = ms.load_into({"model": by_dict}, path, select="model.")
    assert module_report.loaded == dict_report.loaded and _same(by_module, by_dict)


def test_select_and_rename_to_the_module_own_keys(saved):
    path, src = saved
    target = _net(1)
    assert ms.load_into(target, path, select="model.", rename={"model.": ""}).ok
    assert _same(target, src)


def test_select_part_of_the_module(saved):
    path, src = saved
    target = _net(1)
    before = target[2].weight.clone()
    report = ms.load_into(target, path, select="model.0.")
    assert sorted(report.loaded) == ["model.0.bias", "model.0.weight"]
    assert torch.equal(target[0].weight, src[0].weight) and torch.equal(target[2].weight, before)
    listed = _net(1)
    assert ms.load_into(listed, path, select=["model.0.weight"]).loaded == ["model.0.weight"]
    assert torch.equal(listed[0].weight, src[0].weight) and not torch.equal(listed[0].bias, src[0].bias)


def test_a_module_that_does_not_fit_fails_strictly_and_changes_nothing(saved):
    path, _ = saved
    target = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ms.IncompatibleStateError) as info:
        ms.load_into(target, path, select="model.")
    assert sorted(m.key for m in info.value.report.mismatched) == ["model.0.bias", "model.0.weight", "model.2.weight"]
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_select_that_names_no_part_is_missing(saved):
    path, _ = saved
    with pytest.raises(ms.IncompatibleStateError) as info:
        ms.load_into(_net(1), path, select="encoder.")
    assert info.value.report.missing == ["encoder.*"]
    with pytest.raises(ms.IncompatibleStateError):  # without select the root is a dict of two parts, not the module
        ms.load_into(_net(1), path)


def test_the_same_holds_for_a_single_file(tmp_path, saved):
    """Not sharded-specific: a file of state dicts takes select into a lone module the same way."""
    _, src = saved
    path = tmp_path / "state.safetensors"
    ms.save({"model": src.state_dict(), "epoch": 3}, path)
    target = _net(1)
    assert ms.load_into(target, path, select="model.").ok and _same(target, src)
