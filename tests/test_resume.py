"""Exact resume: N steps, save, N more == restore at N in a fresh process, N more (bit for bit, RNG included)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
import modelsafe as ms  # noqa: E402

SCRIPT = textwrap.dedent(
    """
    import random, sys
    import numpy as np
    import torch
    from torch import nn
    import modelsafe as ms
    from modelsafe.rng import RNGState

    @ms.rebuildable(name="resume.Net")
    class Net(nn.Module):
        def __init__(self, d_in, hidden, p_drop):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Dropout(p_drop), nn.LayerNorm(hidden))
            self.head = nn.Linear(hidden, 1)

        def forward(self, x):
            return self.head(self.body(x))

    def train(model, opt, sched, scaler, start, stop):
        model.train()
        for step in range(start, stop):
            x = torch.randn(16, 6)                                   # torch CPU RNG
            x = x + torch.from_numpy(np.random.standard_normal((16, 6)).astype(np.float32))  # numpy legacy RNG
            y = x[:, :1] * random.choice([0.5, 1.0, 2.0])           # python RNG
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)              # dropout draws from torch RNG
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()

    def fresh(seed):
        torch.manual_seed(seed); np.random.seed(seed); random.seed(seed)
        model = Net(6, 32, 0.3)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=100)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
        return model, opt, sched, scaler

    mode, ckpt, out, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if mode == "straight":
        model, opt, sched, scaler = fresh(0)
        train(model, opt, sched, scaler, 0, n)
        ms.save({"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler,
                 "rng": RNGState.capture(), "step": n}, ckpt, metadata={"loss": 0.5})
        train(model, opt, sched, scaler, n, 2 * n)
    elif mode in ("load", "load_without_rng"):
        state = ms.load(ckpt)
        if mode == "load":
            state["rng"].restore()
        model, opt, sched, scaler = state["model"], state["optimizer"], state["scheduler"], state["scaler"]
        assert sched.optimizer is opt and opt.param_groups[0]["params"][0] is next(model.parameters())
        train(model, opt, sched, scaler, state["step"], 2 * n)
    elif mode == "load_into":
        model, opt, sched, scaler = fresh(123)
        state = {"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler, "rng": RNGState(), "step": 0}
        report = ms.load_into(state, ckpt)
        assert report.ok, report
        state["rng"].restore()
        train(model, opt, sched, scaler, state["step"], 2 * n)
    ms.save(dict(model.state_dict()), out)
    """
)


def _run(script, *args):
    res = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("steps", [7])
def test_resume_is_bit_identical(tmp_path, steps):
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    ckpt = tmp_path / "ckpt.safetensors"
    outs = {}
    for mode in ("straight", "load", "load_into", "load_without_rng"):
        outs[mode] = tmp_path / f"{mode}.safetensors"
        _run(script, mode, ckpt, outs[mode], steps)
    ref = ms.load(outs["straight"])
    for mode in ("load", "load_into"):
        got = ms.load(outs[mode])
        assert list(got) == list(ref)
        for key in ref:
            assert torch.equal(got[key], ref[key]), (mode, key)
    # controls, so the comparison is not vacuous: dropout and data depend on the RNG state ...
    no_rng = ms.load(outs["load_without_rng"])
    assert any(not torch.equal(no_rng[k], ref[k]) for k in ref)
    # ... and the run really moved on from the checkpoint
    with ms.open(ckpt) as r:  # (this process does not know resume.Net; reading tensors needs no class)
        assert any(not torch.equal(r[f"model.{k}"], ref[k]) for k in ref)
        assert r.metadata == {"loss": 0.5}
