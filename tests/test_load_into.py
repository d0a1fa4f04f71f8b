"""ms.load_into: in-place restore, strictness, reports, select/rename, tree targets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

import modelsafe as ms
from modelsafe.load_into import LoadReport, Mismatch


def mlp(d_in=4, hidden=8, d_out=2):
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


@ms.rebuildable(name="tests.load_into.Encoder")
class Encoder(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.hidden = nn.Linear(4, hidden)
        self.out = nn.Linear(hidden, 3)


class Bigger(nn.Module):
    def __init__(self, hidden=8):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, hidden), nn.Tanh())
        self.head = nn.Linear(hidden, 5)


def same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def snapshot(m: nn.Module) -> dict:
    return {k: v.clone() for k, v in m.state_dict().items()}


@pytest.mark.parametrize("saved", ["state_dict", "module", "tree"])
def test_loads_plain_state_dicts_and_saved_modules_alike(tmp_path, saved):
    src = mlp()
    p = tmp_path / "m.safetensors"
    ms.save({"state_dict": src.state_dict(), "module": src, "tree": {"model": src, "epoch": 3}}[saved], p)
    clone = mlp()
    report = ms.load_into(clone, p)
    assert report.ok and sorted(report.loaded) == sorted(src.state_dict())
    assert same(clone, src)


def test_copies_in_place_keeping_parameter_identity_and_target_dtype(tmp_path):
    src = mlp()
    p = tmp_path / "m.safetensors"
    ms.save(src.half().state_dict(), p)
    target = mlp()
    params = list(target.parameters())
    assert ms.load_into(target, p).ok  # float16 into float32 is the same dtype class
    assert all(a is b for a, b in zip(params, target.parameters()))
    assert target[0].weight.dtype == torch.float32
    assert torch.equal(target[0].weight, src[0].weight.float())


def test_strict_mismatch_writes_nothing_and_reports_everything(tmp_path):
    p = tmp_path / "m.safetensors"
    ms.save(mlp(hidden=8).state_dict(), p)
    target = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2), nn.Linear(2, 2))
    before = snapshot(target)
    with pytest.raises(ms.IncompatibleStateError) as info:
        ms.load_into(target, p)
    report = info.value.report
    assert isinstance(report, LoadReport) and not report.ok
    assert sorted(report.missing) == ["3.bias", "3.weight"]
    assert report.unexpected == []
    keys = {m.key: m for m in report.mismatched}
    assert set(keys) == {"0.weight", "0.bias", "2.weight"}
    assert keys["0.weight"].saved_shape == (8, 4) and keys["0.weight"].target_shape == (6, 4)
    assert "0.weight: file (8, 4)" in str(info.value) and "(6, 4)" in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # nothing written


def test_non_strict_loads_what_matches(tmp_path):
    src = mlp(hidden=8)
    p = tmp_path / "m.safetensors"
    ms.save(src, p)
    target = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    report = ms.load_into(target, p, strict=False)
    assert report.loaded == ["2.bias"]
    assert torch.equal(target[2].bias, src[2].bias)
    assert {m.key for m in report.mismatched} == {"0.weight", "0.bias", "2.weight"}


def test_dtype_class_mismatch_is_reported(tmp_path):
    p = tmp_path / "m.safetensors"
    ms.save({"w": torch.zeros(3, dtype=torch.int64)}, p)
    with pytest.raises(ms.IncompatibleStateError) as info:
        ms.load_into({"w": torch.zeros(3)}, p)
    assert info.value.report.mismatched == [Mismatch("w", (3,), "int64", (3,), "float32")]


def test_unexpected_keys(tmp_path):
    p = tmp_path / "m.safetensors"
    ms.save(mlp().state_dict(), p)
    target = nn.Sequential(nn.Linear(4, 8))
    with pytest.raises(ms.IncompatibleStateError) as info:
        ms.load_into(target, p)
    assert sorted(info.value.report.unexpected) == ["2.bias", "2.weight"]


def test_transfer_first_layers_into_another_architecture_is_one_call(tmp_path):
    src = Encoder(hidden=8)
    p = tmp_path / "enc.safetensors"
    ms.save({"model": src, "epoch": 2}, p)
    dst = Bigger(hidden=8)
    head_before = dst.head.weight.clone()
    report = ms.load_into({"model": dst}, p, select="model.hidden.", rename={"model.hidden.": "model.encoder.0."})
    assert report.ok and sorted(report.loaded) == ["model.encoder.0.bias", "model.encoder.0.weight"]
    assert torch.equal(dst.encoder[0].weight, src.hidden.weight)
    assert torch.equal(dst.head.weight, head_before)
    # same thing against a lone module (the file's single saved module is used)
    dst2 = Bigger(hidden=8)
    assert ms.load_into(dst2, p, select="hidden.", rename={"hidden.": "encoder.0."}).ok
    assert torch.equal(dst2.encoder[0].bias, src.hidden.bias)


def test_select_a_list_of_keys(tmp_path):
    src = mlp()
    p = tmp_path / "m.safetensors"
    ms.save(src.state_dict(), p)
    target = mlp()
    report = ms.load_into(target, p, select=["0.weight"])
    assert report.loaded == ["0.weight"]
    assert torch.equal(target[0].weight, src[0].weight) and not torch.equal(target[0].bias, src[0].bias)


def test_select_that_finds_nothing_is_missing(tmp_path):
    p = tmp_path / "m.safetensors"
    ms.save(mlp().state_dict(), p)
    with pytest.raises(ms.IncompatibleStateError) as info:
        ms.load_into(mlp(), p, select="encoder.")
    assert info.value.report.missing == ["encoder.*"]
    with pytest.raises(ms.IncompatibleStateError) as info:
        ms.load_into(mlp(), p, select=["0.weight", "9.weight"])
    assert info.value.report.missing == ["9.weight"]


def test_selected_key_that_does_not_fit_fails_strictly(tmp_path):
    p = tmp_path / "m.safetensors"
    ms.save(Encoder(hidden=8), p)
    dst = Bigger(hidden=6)
    with pytest.raises(ms.IncompatibleStateError):
        ms.load_into(dst, p, select="hidden.", rename={"hidden.": "encoder.0."})
    with pytest.raises(ms.IncompatibleStateError) as info:
        ms.load_into(dst, p, select="hidden.", rename={"hidden.": "nowhere."})
    assert sorted(info.value.report.unexpected) == ["nowhere.bias", "nowhere.weight"]


def test_training_state_tree_resumes_in_place(tmp_path):
    torch.manual_seed(0)
    model = mlp()
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).sum().backward()
        opt.step()
        sched.step()
    p = tmp_path / "ckpt.safetensors"
    ms.save({"model": model, "optimizer": opt, "scheduler": sched, "epoch": 3, "note": "x"}, p)

    m2 = mlp()
    o2 = torch.optim.AdamW(m2.parameters(), lr=0.5)
    s2 = torch.optim.lr_scheduler.StepLR(o2, 2, gamma=0.5)
    state = {"model": m2, "optimizer": o2, "scheduler": s2, "epoch": 0}
    report = ms.load_into(state, p)
    assert report.ok and "optimizer" in report.loaded and "epoch" in report.loaded
    assert state["epoch"] == 3 and "note" not in state  # entries the target does not name are ignored
    assert same(m2, model)
    assert str(o2.state_dict()) == str(opt.state_dict())
    assert s2.state_dict() == sched.state_dict()
    assert o2.param_groups[0]["params"][0] is m2[0].weight  # bound to the target's own parameters
    assert all(v.data_ptr() % 64 == 0 for s in o2.state.values() for v in s.values() if v.numel())


def test_optimizer_group_mismatch_is_reported(tmp_path):
    m = mlp()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    p = tmp_path / "o.safetensors"
    ms.save({"optimizer": opt}, p)
    other = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    with pytest.raises(ms.IncompatibleStateError) as info:
        ms.load_into({"optimizer": other}, p)
    assert "[4]" in str(info.value) and "[2]" in str(info.value)


def test_missing_tree_entry_is_missing(tmp_path):
    p = tmp_path / "t.safetensors"
    ms.save({"model": mlp()}, p)
    with pytest.raises(ms.IncompatibleStateError) as info:
        ms.load_into({"model": mlp(), "optimizer": torch.optim.SGD(mlp().parameters(), lr=1)}, p)
    assert info.value.report.missing == ["optimizer"]


def test_numpy_and_torch_tensor_targets(tmp_path):
    p = tmp_path / "t.safetensors"
    ms.save({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": torch.ones(2)}, p)
    a, b = np.zeros((2, 3), np.float32), torch.zeros(2)
    assert ms.load_into({"a": a, "b": b}, p).ok
    assert a[1, 2] == 5 and torch.equal(b, torch.ones(2))


def test_rng_objects_restore_in_place(tmp_path):
    import random

    p = tmp_path / "r.safetensors"
    g, r = np.random.default_rng(5), random.Random(9)
    ms.save({"g": g, "r": r}, p)
    expected = (g.random(), r.random())
    g2, r2 = np.random.default_rng(0), random.Random(0)
    assert ms.load_into({"g": g2, "r": r2}, p).ok
    assert (g2.random(), r2.random()) == expected


def test_corruption_in_a_loaded_tensor_is_detected(tmp_path):
    p = tmp_path / "m.safetensors"
    ms.save(mlp().state_dict(), p)
    blob = bytearray(p.read_bytes())
    blob[-3] ^= 0x10
    p.write_bytes(bytes(blob))
    with pytest.raises(ms.CorruptCheckpointError):
        ms.load_into(mlp(), p)


def test_unsupported_target_type_is_a_clear_error(tmp_path):
    p = tmp_path / "m.safetensors"
    ms.save({"x": 1}, p)
    with pytest.raises(TypeError, match="load_into"):
        ms.load_into(object(), p)


@settings(max_examples=25, deadline=None)
@given(keep=st.lists(st.booleans(), min_size=4, max_size=4), hidden=st.sampled_from([3, 8]))
def test_report_partitions_the_keys(tmp_path_factory, keep, hidden):
    """Every target key is loaded, missing or mismatched; every file key is loaded, unexpected or mismatched."""
    src = mlp(hidden=8)
    state = {k: v for (k, v), flag in zip(src.state_dict().items(), keep) if flag}
    p = tmp_path_factory.mktemp("r") / "m.safetensors"
    ms.save(state, p)
    target = mlp(hidden=hidden)
    report = ms.load_into(target, p, strict=False)
    mism = {m.key for m in report.mismatched}
    assert set(report.loaded) | set(report.missing) | mism == set(target.state_dict())
    assert set(report.loaded) | set(report.unexpected) | mism == set(state)
    assert not (set(report.loaded) & mism) and not (set(report.missing) & set(report.loaded))
    for k in report.loaded:
        assert torch.equal(target.state_dict()[k], state[k])


# -- damaged files: load_into raises ModelsafeErrors ---------------------------------------------------

from craft import manifest_of, replace_tree_node  # noqa: E402

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**40) | st.floats(allow_nan=False)
    | st.sampled_from(["0.weight", "model.0.weight", "torch.module", "torch.optimizer", "state", ""]),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["dict", "tensor", "object", "state", "tuple", "id", "param_groups"]), inner,
                      min_size=1, max_size=3),
    max_leaves=8,
)


def _paths(node, prefix=()):
    yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in children:
        yield from _paths(v, prefix + (k,))


@pytest.fixture(scope="module")
def resume_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("dmg")
    m = mlp()
    opt = torch.optim.Adam(m.parameters())
    m(torch.randn(2, 4)).sum().backward()
    opt.step()
    p = d / "base.safetensors"
    ms.save({"model": m, "optimizer": opt, "epoch": 1}, p)
    tree = manifest_of(p)["tree"]
    return d, p, tree, list(_paths(tree))[1:]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_damaged_files_give_modelsafe_errors(resume_file, data):
    import shutil

    d, base, tree, paths = resume_file
    where, value = data.draw(st.sampled_from(paths)), data.draw(_JSON)
    p = d / "damaged.safetensors"
    shutil.copyfile(base, p)

    replace_tree_node(p, tree, where, value)
    m = mlp()
    target = {"model": m, "optimizer": torch.optim.Adam(m.parameters()), "epoch": 0}
    for strict in (True, False):
        try:
            ms.load_into(target, p, strict=strict)
        except ms.ModelsafeError:
            pass


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch._dynamo's own imports warn
def test_wrapper_prefixes_are_reconciled(tmp_path):
    """torch.compile and DataParallel add "_orig_mod." / "module." to state_dict keys; any side may be wrapped."""
    src = mlp()
    files = {
        "compiled": torch.compile(src).state_dict(),      # keys "_orig_mod.0.weight", ...
        "parallel": nn.DataParallel(src).state_dict(),    # keys "module.0.weight", ...
        "plain": src.state_dict(),
        "module": nn.DataParallel(src),                   # saved as the module itself: keys "0.weight"
    }
    assert list(files["compiled"])[0] == "_orig_mod.0.weight" and list(files["parallel"])[0] == "module.0.weight"
    for name, obj in files.items():
        path = tmp_path / f"{name}.safetensors"
        ms.save(obj, path)
        for wrap in (lambda m: m, torch.compile, nn.DataParallel):
            inner = mlp()
            report = ms.load_into(wrap(inner), path)
            assert report.ok and len(report.loaded) == 4 and same(inner, src), (name, wrap)
    # with explicit key mapping nothing is guessed
    with pytest.raises(ms.IncompatibleStateError):
        ms.load_into(mlp(), tmp_path / "compiled.safetensors", select="_orig_mod.0.")
    inner = mlp()
    assert ms.load_into(inner, tmp_path / "compiled.safetensors", rename={"_orig_mod.": ""}).ok and same(inner, src)
