"""torch framework objects: modules, optimizers, schedulers, GradScaler, Generators round-trip and work."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler as L

import modelsafe as ms
from modelsafe.errors import MissingRecipeError


@ms.rebuildable(name="tests.torch_objects.TinyNet")
class TinyNet(nn.Module):
    def __init__(self, d_in: int, hidden: int = 8, *, dropout: float = 0.0, act=nn.ReLU) -> None:
        super().__init__()
        self.inp = nn.Linear(d_in, hidden)
        self.act = act()
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, 2)

    def forward(self, x):
        return self.out(self.drop(self.act(self.inp(x))))


@ms.rebuildable(name="tests.torch_objects.TiedLM")
class TiedLM(nn.Module):
    def __init__(self, vocab: int, dim: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.emb.weight


class Plain(nn.Module):  # no recipe
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)


@ms.rebuildable(name="tests.torch_objects.Wrapper")
class Wrapper(nn.Module):
    def __init__(self, inner: nn.Module, scale: torch.Tensor) -> None:
        super().__init__()
        self.inner = inner
        self.register_buffer("scale", scale.clone())


def _roundtrip(obj, tmp_path, name="f.safetensors", **load_kwargs):
    p = tmp_path / name
    ms.save(obj, p)
    return ms.load(p, **load_kwargs)


def _train(model, opt, steps=3, sched=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, model.inp.in_features if hasattr(model, "inp") else 3, generator=g)
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()
        if sched is not None:
            sched.step()


# -- modules ------------------------------------------------------------------------------------

def test_rebuildable_module_comes_back_working(tmp_path):
    torch.manual_seed(0)
    m = TinyNet(5, hidden=7, dropout=0.1, act=nn.GELU).eval()
    back = _roundtrip({"model": m}, tmp_path)["model"]
    assert type(back) is TinyNet and isinstance(back.act, nn.GELU) and not back.training
    x = torch.randn(3, 5)
    assert torch.equal(back(x), m(x))
    with ms.open(tmp_path / "f.safetensors") as r:
        assert set(r.keys()) == {"model.inp.weight", "model.inp.bias", "model.out.weight", "model.out.bias"}


def test_tied_weights_come_back_tied(tmp_path):
    m = TiedLM(11, 4)
    back = _roundtrip(m, tmp_path)
    assert back.head.weight is back.emb.weight
    assert torch.equal(back.emb.weight, m.emb.weight)
    with ms.open(tmp_path / "f.safetensors") as r:
        assert len(r.records) == 1  # stored once


def test_dtype_device_and_requires_grad_are_those_of_the_file(tmp_path):
    m = TinyNet(3).double()
    m.inp.weight.requires_grad_(False)
    back = _roundtrip(m, tmp_path)
    assert back.inp.weight.dtype == torch.float64
    assert back.inp.weight.requires_grad is False and back.out.weight.requires_grad is True
    assert all(isinstance(p, nn.Parameter) for p in back.parameters())


def test_nested_module_and_tensor_arguments(tmp_path):
    w = Wrapper(TinyNet(3, 4), torch.arange(3.0))
    back = _roundtrip(w, tmp_path)
    assert isinstance(back.inner, TinyNet) and back.inner.inp.out_features == 4
    assert torch.equal(back.scale, torch.arange(3.0))
    for a, b in zip(w.state_dict().values(), back.state_dict().values()):
        assert torch.equal(a, b)


def test_ms_build_records_recipes_for_classes_you_cannot_decorate(tmp_path):
    m = ms.build(nn.TransformerEncoderLayer, d_model=8, nhead=2, dim_feedforward=16, batch_first=True).eval()
    back = _roundtrip(m, tmp_path)
    x = torch.randn(2, 3, 8)
    assert torch.equal(back(x), m(x))


BUILTIN_LAYERS = [
    lambda: nn.Linear(3, 4, bias=False),
    lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1, groups=1, bias=True),
    lambda: nn.Conv1d(2, 2, 5, padding="same"),
    lambda: nn.ConvTranspose2d(2, 3, 2),
    lambda: nn.BatchNorm1d(4, momentum=0.2),
    lambda: nn.LayerNorm([4, 5], eps=1e-3, elementwise_affine=True),
    lambda: nn.GroupNorm(2, 4),
    lambda: nn.Embedding(10, 3, padding_idx=0),
    lambda: nn.LSTM(4, 6, num_layers=2, batch_first=True, bidirectional=True),
    lambda: nn.GRU(3, 5),
    lambda: nn.RNN(3, 5, nonlinearity="relu"),
    lambda: nn.MultiheadAttention(8, 2, bias=False),
    lambda: nn.Dropout(0.3),
    lambda: nn.LeakyReLU(0.2),
    lambda: nn.PReLU(3),
    lambda: nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 3), nn.Tanh())),
    lambda: nn.ModuleList([nn.Linear(2, 2), nn.Identity()]),
    lambda: nn.ModuleDict({"a": nn.Linear(2, 2), "b": nn.Softmax(dim=-1)}),
]


@pytest.mark.parametrize("make", BUILTIN_LAYERS, ids=lambda f: inspect.getsource(f).split("nn.", 1)[1].split("(")[0])
def test_builtin_layers_rebuild_without_ms_build(tmp_path, make):
    m = make()
    back = _roundtrip(m, tmp_path)
    assert type(back) is type(m)
    assert repr(back) == repr(m)
    for (k1, v1), (k2, v2) in zip(m.state_dict().items(), back.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)


def test_named_sequential_keeps_its_names(tmp_path):
    from collections import OrderedDict

    m = nn.Sequential(OrderedDict(enc=nn.Linear(2, 3), act=nn.ReLU()))
    back = _roundtrip(m, tmp_path)
    assert list(back._modules) == ["enc", "act"]


def test_module_without_recipe_saves_but_load_says_what_to_do(tmp_path):
    p = tmp_path / "plain.safetensors"
    ms.save({"model": Plain()}, p)
    with pytest.raises(MissingRecipeError) as info:
        ms.load(p)
    msg = str(info.value)
    assert "ms.load_into" in msg and "@ms.rebuildable" in msg and "Plain" in msg and 'obj["model"]' in msg
    assert isinstance(info.value, ms.UnknownClassError)
    target = Plain()
    assert ms.load_into({"model": target}, p).ok


def test_sequential_with_an_unrebuildable_child_names_the_child(tmp_path):
    p = tmp_path / "seq.safetensors"
    ms.save(nn.Sequential(nn.Linear(3, 3), Plain()), p)
    with pytest.raises(MissingRecipeError, match="Plain"):
        ms.load(p)


def test_unstorable_constructor_argument_is_named(tmp_path):
    m = TinyNet(3, act=lambda: nn.ReLU())
    with pytest.raises(ms.UnsupportedObjectError) as info:
        ms.save({"model": m}, tmp_path / "x.safetensors")
    assert "'act'" in str(info.value) and "TinyNet" in str(info.value)
    assert not (tmp_path / "x.safetensors").exists()


def test_changed_class_gives_shape_error_naming_keys_and_shapes(tmp_path):
    p = tmp_path / "m.safetensors"
    ms.save(TinyNet(3, hidden=4), p)
    # the same recipe now builds a different network: simulate an edited class
    original = TinyNet.__dict__["__init__"]

    def edited(self, d_in, hidden=8, **kw):
        original(self, d_in, hidden + 1, **kw)

    TinyNet.__init__ = edited
    try:
        with pytest.raises(ms.IncompatibleStateError) as info:
            ms.load(p)
    finally:
        TinyNet.__init__ = original
    msg = str(info.value)
    assert "inp.weight" in msg and "(4, 3)" in msg and "(5, 3)" in msg
    assert info.value.report.mismatched


# -- optimizers ------------------------------------------------------------------------------------

def _optimizers():
    """Every optimizer in torch.optim; SparseAdam needs sparse gradients and has its own test."""
    for name, cls in vars(torch.optim).items():
        if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) and name not in ("Optimizer", "SparseAdam"):
            yield name, cls


OPTIMIZER_KWARGS = {"SparseAdam": None, "Muon": {"lr": 0.01}, "LBFGS": {"lr": 0.1}}


def _assert_state_equal(a, b):
    assert type(a) is type(b)
    if isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            _assert_state_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            _assert_state_equal(x, y)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b)
    else:
        assert a == b


@pytest.mark.parametrize("name,cls", list(_optimizers()), ids=[n for n, _ in _optimizers()])
def test_every_optimizer_comes_back_bound_with_its_state(tmp_path, name, cls):
    torch.manual_seed(0)
    # Muon optimizes matrices only
    model = TinyNet(3) if name != "Muon" else nn.Sequential(nn.Linear(3, 4, bias=False), nn.Linear(4, 2, bias=False))
    opt = cls(model.parameters(), **(OPTIMIZER_KWARGS.get(name) or {}))

    def step(m, o):
        x = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))

        def closure():
            o.zero_grad()
            loss = m(x).pow(2).mean()
            loss.backward()
            return loss

        o.step(closure)

    step(model, opt)
    back = _roundtrip({"model": model, "optimizer": opt}, tmp_path)
    m2, o2 = back["model"], back["optimizer"]
    assert type(o2) is cls
    assert all(p is q for p, q in zip(o2.param_groups[0]["params"], m2.parameters()))
    _assert_state_equal(o2.state_dict(), opt.state_dict())
    step(model, opt)
    step(m2, o2)
    for a, b in zip(model.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_sparse_adam_round_trips(tmp_path):
    emb = nn.Embedding(6, 3, sparse=True)
    opt = torch.optim.SparseAdam(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    opt.step()
    back = _roundtrip({"emb": emb, "opt": opt}, tmp_path)
    _assert_state_equal(back["opt"].state_dict(), opt.state_dict())
    assert back["opt"].param_groups[0]["params"][0] is back["emb"].weight


def test_param_groups_and_optimizer_before_model_in_the_tree(tmp_path):
    m = TinyNet(3)
    opt = torch.optim.SGD(
        [{"params": m.inp.parameters(), "lr": 0.1}, {"params": m.out.parameters(), "weight_decay": 0.01}],
        lr=0.05, momentum=0.9,
    )
    _train(m, opt)
    back = _roundtrip({"optimizer": opt, "model": m}, tmp_path)
    o2, m2 = back["optimizer"], back["model"]
    assert [len(g["params"]) for g in o2.param_groups] == [2, 2]
    assert o2.param_groups[1]["params"][0] is m2.out.weight
    _assert_state_equal(o2.state_dict(), opt.state_dict())
    with ms.open(tmp_path / "f.safetensors") as r:
        assert "model.inp.weight" in r.records  # the model owns the names, wherever the optimizer is


def test_optimizer_saved_without_its_model_binds_to_its_own_saved_parameters(tmp_path):
    m = TinyNet(3)
    opt = torch.optim.Adam(m.parameters(), lr=0.01)
    _train(m, opt)
    o2 = _roundtrip(opt, tmp_path)
    params = o2.param_groups[0]["params"]
    assert [tuple(p.shape) for p in params] == [tuple(p.shape) for p in m.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(params, m.parameters()))
    _assert_state_equal(o2.state_dict(), opt.state_dict())
    # to bind to a model you have, load_into the optimizer you built for it
    m3 = TinyNet(3)
    o3 = torch.optim.Adam(m3.parameters(), lr=0.5)
    assert ms.load_into(o3, tmp_path / "f.safetensors").ok
    _assert_state_equal(o3.state_dict(), opt.state_dict())


# -- schedulers -------------------------------------------------------------------------------------

def _sgd():
    m = TinyNet(3)
    return m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)


SCHEDULERS = {
    "StepLR": lambda o: L.StepLR(o, 2, gamma=0.5),
    "MultiStepLR": lambda o: L.MultiStepLR(o, [2, 4, 4], gamma=0.3),
    "ConstantLR": lambda o: L.ConstantLR(o, factor=0.5, total_iters=3),
    "LinearLR": lambda o: L.LinearLR(o, start_factor=0.2, total_iters=4),
    "ExponentialLR": lambda o: L.ExponentialLR(o, 0.9),
    "PolynomialLR": lambda o: L.PolynomialLR(o, total_iters=6, power=2.0),
    "CosineAnnealingLR": lambda o: L.CosineAnnealingLR(o, 5, eta_min=0.01),
    "CosineAnnealingWarmRestarts": lambda o: L.CosineAnnealingWarmRestarts(o, 3, T_mult=2),
    "CyclicLR": lambda o: L.CyclicLR(o, 0.01, 0.1, step_size_up=3, mode="triangular2"),
    "OneCycleLR": lambda o: L.OneCycleLR(o, 0.5, total_steps=20, anneal_strategy="linear", three_phase=True),
    "ReduceLROnPlateau": lambda o: L.ReduceLROnPlateau(o, patience=1, factor=0.5),
    "SequentialLR": lambda o: L.SequentialLR(o, [L.LinearLR(o, 0.1, total_iters=2), L.ExponentialLR(o, 0.8)], [2]),
    "ChainedScheduler": lambda o: L.ChainedScheduler([L.ConstantLR(o, 0.5, 2), L.ExponentialLR(o, 0.9)]),
    "SWALR": lambda o: torch.optim.swa_utils.SWALR(o, swa_lr=0.05, anneal_epochs=3),
}


def _advance(sched, opt, model, n):
    for i in range(n):
        _train(model, opt, steps=1, seed=i)
        if isinstance(sched, L.ReduceLROnPlateau):
            sched.step(1.0)
        else:
            sched.step()


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_every_scheduler_comes_back_bound_and_continues_identically(tmp_path, name):
    torch.manual_seed(0)
    model, opt = _sgd()
    sched = SCHEDULERS[name](opt)
    _advance(sched, opt, model, 4)
    back = _roundtrip({"model": model, "optimizer": opt, "scheduler": sched}, tmp_path)
    m2, o2, s2 = back["model"], back["optimizer"], back["scheduler"]
    assert type(s2) is type(sched) and s2.optimizer is o2
    _assert_state_equal(o2.state_dict(), opt.state_dict())
    assert sched.state_dict().keys() == s2.state_dict().keys()
    _advance(sched, opt, model, 5)
    _advance(s2, o2, m2, 5)
    assert [g["lr"] for g in o2.param_groups] == [g["lr"] for g in opt.param_groups]
    for a, b in zip(model.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_every_builtin_scheduler_is_covered():
    builtins = {n for n, c in vars(L).items() if isinstance(c, type) and issubclass(c, L.LRScheduler)}
    untested = builtins - set(SCHEDULERS) - {"LRScheduler", "_LRScheduler", "LambdaLR", "MultiplicativeLR"}
    assert not untested


def test_scheduler_saved_before_and_without_its_optimizer(tmp_path):
    model, opt = _sgd()
    sched = L.StepLR(opt, 2)
    _advance(sched, opt, model, 3)
    back = _roundtrip({"scheduler": sched, "model": model}, tmp_path)
    assert isinstance(back["scheduler"].optimizer, torch.optim.SGD)
    assert back["scheduler"].optimizer.param_groups[0]["params"][0] is back["model"].inp.weight


@pytest.mark.parametrize("cls", [L.LambdaLR, L.MultiplicativeLR])
def test_lambda_schedulers_are_refused_with_a_clear_error(tmp_path, cls):
    model, opt = _sgd()
    sched = cls(opt, lambda epoch: 0.95)
    with pytest.raises(ms.UnsupportedObjectError) as info:
        ms.save({"scheduler": sched}, tmp_path / "s.safetensors")
    msg = str(info.value)
    assert "lr_lambda" in msg and "load_into" in msg and 'obj["scheduler"]' in msg
    # the state_dict route works
    ms.save({"scheduler": sched.state_dict()}, tmp_path / "s.safetensors")
    again = cls(opt, lambda epoch: 0.95)
    assert ms.load_into({"scheduler": again}, tmp_path / "s.safetensors").ok


@ms.rebuildable(name="tests.torch_objects.Warmup")
class Warmup:
    def __init__(self, steps: int) -> None:
        self.steps = steps

    def __call__(self, epoch: int) -> float:
        return min(1.0, (epoch + 1) / self.steps)


def test_lambda_scheduler_with_a_rebuildable_callable_round_trips(tmp_path):
    model, opt = _sgd()
    sched = L.LambdaLR(opt, Warmup(5))
    _advance(sched, opt, model, 2)
    back = _roundtrip({"model": model, "optimizer": opt, "scheduler": sched}, tmp_path)
    s2 = back["scheduler"]
    assert isinstance(s2.lr_lambdas[0], Warmup) and s2.lr_lambdas[0].steps == 5
    assert s2.get_last_lr() == sched.get_last_lr()


# -- GradScaler, generators ------------------------------------------------------------------------

def test_grad_scaler_round_trips(tmp_path):
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    scaler._lazy_init_scale_growth_tracker(torch.device("cpu"))
    scaler.update(512.0)
    back = _roundtrip({"scaler": scaler}, tmp_path)["scaler"]
    assert isinstance(back, torch.amp.GradScaler)
    assert back.state_dict() == scaler.state_dict()
    assert back.get_scale() == 512.0 and back.get_growth_interval() == 7


def test_torch_generator_round_trips(tmp_path):
    g = torch.Generator().manual_seed(123)
    torch.rand(5, generator=g)
    back = _roundtrip({"before": torch.zeros(3, dtype=torch.uint8), "g": g}, tmp_path)["g"]  # state not first
    assert torch.equal(torch.rand(8, generator=back), torch.rand(8, generator=g))


def test_loading_as_numpy_cannot_rebuild_torch_objects_and_says_so(tmp_path):
    p = tmp_path / "m.safetensors"
    ms.save(TinyNet(3), p)
    with pytest.raises(ms.UnsupportedObjectError, match="framework"):
        ms.load(p, framework="numpy")


# -- more module shapes ------------------------------------------------------------------------------

@ms.rebuildable(name="tests.torch_objects.WithExtra")
class WithExtra(nn.Module):
    def __init__(self, tag: str) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        self.counter = 0
        self.tag = tag

    def get_extra_state(self):
        return {"counter": self.counter}

    def set_extra_state(self, state):
        self.counter = state["counter"]


def test_extra_state_round_trips(tmp_path):
    m = WithExtra("a")
    m.counter = 41
    back = _roundtrip(m, tmp_path)
    assert back.counter == 41 and back.tag == "a"


def test_a_module_twice_in_the_tree_is_one_object(tmp_path):
    m = TinyNet(3)
    back = _roundtrip({"a": m, "b": [m]}, tmp_path)
    assert back["a"] is back["b"][0]


def test_a_module_at_the_root_has_state_dict_keys_in_safetensors(tmp_path):
    from safetensors import safe_open

    m = TinyNet(3)
    p = tmp_path / "m.safetensors"
    ms.save(m, p)
    with safe_open(str(p), "pt") as f:
        assert sorted(f.keys()) == sorted(m.state_dict())
        assert torch.equal(f.get_tensor("inp.weight"), m.inp.weight)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch._dynamo's own imports warn
def test_compiled_module_is_stored_as_the_module(tmp_path):
    m = TinyNet(3)
    back = _roundtrip({"m": torch.compile(m)}, tmp_path)["m"]
    assert type(back) is TinyNet
    assert torch.equal(back.inp.weight, m.inp.weight)


def test_slots_only_classes_cannot_be_decorated():
    class Slotted:
        __slots__ = ("a",)

    with pytest.raises(TypeError, match="__slots__"):
        ms.rebuildable(Slotted)


from hypothesis import (  # noqa: E402
    given,
    settings,
    strategies as st,  # noqa: E402
)


@settings(max_examples=20, deadline=None)
@given(
    widths=st.lists(st.integers(1, 6), min_size=2, max_size=5),
    bias=st.lists(st.booleans(), min_size=4, max_size=4),
    act=st.sampled_from([nn.ReLU, nn.Tanh, nn.Identity, nn.GELU]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
)
def test_random_sequentials_round_trip(tmp_path_factory, widths, bias, act, dtype):
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers += [nn.Linear(a, b, bias=bias[i]), act()]
    m = nn.Sequential(*layers).to(dtype)
    p = tmp_path_factory.mktemp("s") / "m.safetensors"
    ms.save(m, p)
    back = ms.load(p)
    x = torch.randn(2, widths[0], dtype=dtype)
    assert repr(back) == repr(m) and torch.equal(back(x), m(x))


def test_objects_shared_between_places_and_recipes_stay_one_object(tmp_path):
    model, opt = _sgd()
    warm = L.LinearLR(opt, 0.1, total_iters=2)
    decay = L.ExponentialLR(opt, 0.8)
    seq = L.SequentialLR(opt, [warm, decay], [2])
    _advance(seq, opt, model, 3)
    inner = TinyNet(3)
    outer = Wrapper(inner, torch.ones(1))
    back = _roundtrip({"seq": seq, "warm": warm, "opt": opt, "outer": outer, "inner": inner, "model": model}, tmp_path)
    assert back["seq"]._schedulers[0] is back["warm"]
    assert back["warm"].optimizer is back["opt"] is back["seq"].optimizer
    assert back["outer"].inner is back["inner"]
    assert back["warm"].state_dict() == warm.state_dict()
    assert torch.equal(back["inner"].inp.weight, inner.inp.weight)


# -- RNG states -------------------------------------------------------------------------------------

def _draws():
    import random

    import numpy as np

    return random.random(), float(np.random.random()), float(torch.rand(1))


def test_global_rng_state_saves_and_restores(tmp_path):
    from modelsafe.rng import RNGState

    state = RNGState.capture()
    expected = _draws()
    back = _roundtrip({"rng": state}, tmp_path)["rng"]
    assert back == state and back is not state
    _draws()
    back.restore()
    assert _draws() == expected


def test_cuda_rng_states_are_captured_and_restored_when_cuda_is_in_use(tmp_path, monkeypatch):
    """No GPU here: the CUDA calls are stand-ins that record what modelsafe asks of them."""
    from modelsafe.rng import RNGState

    devices = [torch.full((16,), 3, dtype=torch.uint8), torch.full((16,), 7, dtype=torch.uint8)]
    restored = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [d.clone() for d in devices])
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.__setitem__(device, state.clone()))
    back = _roundtrip(RNGState.capture(), tmp_path)
    assert len(back.cuda) == 2
    back.restore()
    assert list(restored) == [0] and torch.equal(restored[0], devices[0])  # only the devices this machine has


def test_rng_objects_round_trip(tmp_path):
    import random

    import numpy as np

    objs = {
        "py": random.Random(3),
        "gen": np.random.default_rng(4),
        "philox": np.random.Generator(np.random.Philox(5)),
        "mt": np.random.Generator(np.random.MT19937(6)),
        "legacy": np.random.RandomState(7),
        "torch": torch.Generator().manual_seed(8),
    }
    back = _roundtrip(objs, tmp_path)
    assert back["py"].random() == objs["py"].random()
    assert back["gen"].random() == objs["gen"].random()
    assert back["philox"].integers(1 << 60) == objs["philox"].integers(1 << 60)
    assert back["mt"].normal() == objs["mt"].normal()
    assert back["legacy"].randn() == objs["legacy"].randn()
    assert torch.equal(torch.rand(3, generator=back["torch"]), torch.rand(3, generator=objs["torch"]))


# -- building on the meta device: no wasted initialisation, never a half-built module ---------------

class _Cache:
    def __init__(self, n):
        self.table = torch.arange(n, dtype=torch.float32) * 2


@ms.rebuildable(name="tests.torch_objects.Tricky")
class Tricky(nn.Module):
    """Holds tensors the state_dict does not: each kind must come back real, not meta."""

    def __init__(self, n: int, kind: str) -> None:
        super().__init__()
        self.fc = nn.Linear(n, n)
        if kind == "nonpersistent":
            self.register_buffer("rope", torch.arange(n, dtype=torch.float32), persistent=False)
        elif kind == "attribute":
            self.scale = torch.full((n,), 3.0)
        elif kind == "helper":
            self.cache = _Cache(n)
        elif kind == "closure":
            bias = torch.ones(n)
            self.register_forward_hook(lambda mod, inp, out: out + bias)
        elif kind == "item":
            self.limit = float(torch.tensor(float(n)).sqrt().item())

    def forward(self, x):
        return self.fc(x)


EXTRA = {
    "nonpersistent": lambda m: m.rope,
    "attribute": lambda m: m.scale,
    "helper": lambda m: m.cache.table,
    "closure": lambda m: m(torch.zeros(1, 4)) - m.fc(torch.zeros(1, 4)),
    "item": lambda m: torch.tensor(m.limit),
}


@pytest.mark.parametrize("kind", list(EXTRA))
def test_modules_holding_extra_tensors_are_built_for_real(tmp_path, kind):
    m = Tricky(4, kind).eval()
    back = _roundtrip(m, tmp_path)
    x = torch.randn(2, 4)
    assert torch.equal(back(x), m(x))
    extra = EXTRA[kind](back)
    assert not extra.is_meta and torch.equal(extra, EXTRA[kind](m))


def test_plain_models_are_built_without_random_initialisation(tmp_path):
    ms.save(TinyNet(6, 16), tmp_path / "plain.safetensors")
    ms.save(Tricky(4, "nonpersistent"), tmp_path / "tricky.safetensors")
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    back = ms.load(tmp_path / "plain.safetensors")
    assert torch.equal(torch.rand(3), expected)  # building it drew no random numbers
    assert not any(t.is_meta for t in back.state_dict().values())
    torch.manual_seed(0)
    ms.load(tmp_path / "tricky.safetensors")
    assert not torch.equal(torch.rand(3), expected)  # control: a module that needs a real build draws


def test_argument_modules_that_need_a_real_build_are_rebuilt_for_real(tmp_path):
    inner = Tricky(4, "nonpersistent")
    w = Wrapper(inner, torch.ones(1))
    back = _roundtrip({"w": w, "inner": inner}, tmp_path)
    assert back["w"].inner is back["inner"]
    assert torch.equal(back["inner"].rope, torch.arange(4.0)) and not back["w"].scale.is_meta
    assert torch.equal(back["inner"].fc.weight, inner.fc.weight)


def test_rebuilt_objects_hold_aligned_memory_and_do_not_pin_the_file_buffer(tmp_path):
    m = nn.Sequential(nn.Linear(5, 7), nn.Linear(7, 3))  # odd sizes: most tensors land unaligned in the file
    opt = torch.optim.Adam(m.parameters())
    m(torch.randn(2, 5)).sum().backward()
    opt.step()
    back = _roundtrip({"m": m, "o": opt}, tmp_path)
    tensors = list(back["m"].parameters()) + [v for s in back["o"].state.values() for v in s.values()]
    assert all(t.data_ptr() % 64 == 0 for t in tensors if t.numel())
    storages = {t.untyped_storage().data_ptr() for t in tensors if t.numel()}
    assert len(storages) == len([t for t in tensors if t.numel()])  # each its own memory, no shared file buffer


class WarmStep(L.LRScheduler):
    """A user scheduler whose argument is not kept under its own name."""

    def __init__(self, optimizer, warm_steps, last_epoch=-1):
        self.w = warm_steps
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base * min(1.0, (self.last_epoch + 1) / self.w) for base in self.base_lrs]


@ms.rebuildable(name="tests.torch_objects.DecoratedWarmStep")
class DecoratedWarmStep(WarmStep):
    pass


def test_user_schedulers_without_recipe_save_and_say_how_to_restore(tmp_path):
    model, opt = _sgd()
    sched = WarmStep(opt, 4)
    _advance(sched, opt, model, 2)
    p = tmp_path / "s.safetensors"
    ms.save({"model": model, "optimizer": opt, "scheduler": sched}, p)
    with pytest.raises(MissingRecipeError, match="load_into"):
        ms.load(p)
    m2, o2 = _sgd()
    s2 = WarmStep(o2, 4)
    assert ms.load_into({"model": m2, "optimizer": o2, "scheduler": s2}, p).ok
    assert s2.state_dict() == sched.state_dict()


def test_decorated_user_schedulers_round_trip(tmp_path):
    model, opt = _sgd()
    sched = DecoratedWarmStep(opt, warm_steps=4)
    _advance(sched, opt, model, 2)
    back = _roundtrip({"model": model, "optimizer": opt, "scheduler": sched}, tmp_path)
    s2 = back["scheduler"]
    assert type(s2) is DecoratedWarmStep and s2.optimizer is back["optimizer"] and s2.w == 4
    state = {k: v for k, v in sched.state_dict().items() if k != "_modelsafe_recipe"}
    assert {k: v for k, v in s2.state_dict().items() if k != "_modelsafe_recipe"} == state
    _advance(sched, opt, model, 3)
    _advance(s2, back["optimizer"], back["model"], 3)
    assert s2.get_last_lr() == sched.get_last_lr()


def test_lambda_inside_a_sequential_scheduler_is_refused_clearly(tmp_path):
    model, opt = _sgd()
    seq = L.SequentialLR(opt, [L.LambdaLR(opt, lambda e: 1.0), L.ExponentialLR(opt, 0.9)], [2])
    with pytest.raises(ms.UnsupportedObjectError, match="lr_lambda"):
        ms.save({"scheduler": seq}, tmp_path / "s.safetensors")
