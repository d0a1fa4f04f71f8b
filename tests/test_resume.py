"""Exact resume: N steps, save, N more == restore at N in a fresh process, N more (bit for bit, RNG included).

Through ``ms.Checkpoints`` the global RNG states travel with every checkpoint by default.
"""

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

    def save_weights(model, path):
        ms.save(dict(model.state_dict()), path)

    def straight(ckpt, n):
        model, opt, sched, scaler = fresh(0)
        train(model, opt, sched, scaler, 0, n)
        ms.save({"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler,
                 "rng": RNGState.capture(), "step": n}, ckpt, metadata={"loss": 0.5})
        train(model, opt, sched, scaler, n, 2 * n)
        return model

    def load(ckpt, n, rng):
        state = ms.load(ckpt)
        if rng:
            state["rng"].restore()
        model, opt, sched, scaler = state["model"], state["optimizer"], state["scheduler"], state["scaler"]
        assert sched.optimizer is opt and opt.param_groups[0]["params"][0] is next(model.parameters())
        train(model, opt, sched, scaler, state["step"], 2 * n)
        return model

    def load_into(ckpt, n):
        model, opt, sched, scaler = fresh(123)
        state = {"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler, "rng": RNGState(), "step": 0}
        report = ms.load_into(state, ckpt)
        assert report.ok, report
        state["rng"].restore()
        train(model, opt, sched, scaler, state["step"], 2 * n)
        return model

    def ck_train(root, n):  # an uninterrupted run, and one stopped at n, as two runs
        for run, stop in (("straight", 2 * n), ("interrupted", n)):
            model, opt, sched, scaler = fresh(0)
            ck = ms.Checkpoints(f"{root}/{run}", keep_last=2, async_save=run == "interrupted")
            for step in range(stop):  # a checkpoint after every step
                train(model, opt, sched, scaler, step, step + 1)
                ck.save({"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler}, step=step)
            ck.close()
            save_weights(model, f"{root}/ck-{run}.safetensors")

    def ck_resume(root, n):  # resume the interrupted run, with and without the RNG states
        for rng in (True, False):
            model, opt, sched, scaler = fresh(123)
            state = {"model": model, "optimizer": opt, "scheduler": sched, "scaler": scaler}
            ck = ms.Checkpoints(f"{root}/interrupted")
            info = ck.load_into(state, n - 1, rng=rng)
            assert info.step == n - 1, info
            train(model, opt, sched, scaler, n, 2 * n)
            save_weights(model, f"{root}/ck-resumed-rng-{rng}.safetensors")

    # one process trains, a second (fresh) one resumes; every resume starts from the files alone
    phase, root, n, ck_n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    if phase == "train":
        save_weights(straight(f"{root}/ckpt.safetensors", n), f"{root}/straight.safetensors")
        ck_train(root, ck_n)
    else:
        # first, while this process's generators are still untouched: the control without the RNG states
        save_weights(load(f"{root}/ckpt.safetensors", n, rng=False), f"{root}/load_without_rng.safetensors")
        save_weights(load(f"{root}/ckpt.safetensors", n, rng=True), f"{root}/load.safetensors")
        save_weights(load_into(f"{root}/ckpt.safetensors", n), f"{root}/load_into.safetensors")
        ck_resume(root, ck_n)
    """
)

STEPS, CK_STEPS = 7, 5


def _run(script, *args):
    res = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The training process, then the resuming one (two interpreters for every check below, not one each)."""
    root = tmp_path_factory.mktemp("resume")
    script = root / "train.py"
    script.write_text(SCRIPT)
    _run(script, "train", root, STEPS, CK_STEPS)
    _run(script, "resume", root, STEPS, CK_STEPS)
    return root


def test_resume_is_bit_identical(runs):
    ref = ms.load(runs / "straight.safetensors")
    for mode in ("load", "load_into"):
        got = ms.load(runs / f"{mode}.safetensors")
        assert list(got) == list(ref)
        for key in ref:
            assert torch.equal(got[key], ref[key]), (mode, key)
    # controls, so the comparison is not vacuous: dropout and data depend on the RNG state ...
    no_rng = ms.load(runs / "load_without_rng.safetensors")
    assert any(not torch.equal(no_rng[k], ref[k]) for k in ref)
    # ... and the run really moved on from the checkpoint
    with ms.open(runs / "ckpt.safetensors") as r:  # (this process does not know resume.Net; reading tensors needs no class)
        assert any(not torch.equal(r[f"model.{k}"], ref[k]) for k in ref)
        assert r.metadata == {"loss": 0.5}


def test_checkpoints_resume_is_bit_identical_with_the_global_rngs(runs):
    ref = ms.load(runs / "ck-straight.safetensors")
    resumed = ms.load(runs / "ck-resumed-rng-True.safetensors")
    assert list(resumed) == list(ref)
    assert all(torch.equal(resumed[k], ref[k]) for k in ref)
    # the controls: the run really moved on from the checkpoint, and without the RNG
    # states, dropout and the data differ after the resume
    interrupted = ms.load(runs / "ck-interrupted.safetensors")
    assert any(not torch.equal(interrupted[k], ref[k]) for k in ref)
    no_rng = ms.load(runs / "ck-resumed-rng-False.safetensors")
    assert any(not torch.equal(no_rng[k], ref[k]) for k in ref)


def test_the_recorded_rng_is_not_part_of_the_state_and_ms_load_leaves_the_generators_alone(tmp_path):
    import random

    import numpy as np

    ck = ms.Checkpoints(tmp_path)
    torch.manual_seed(3)
    ck.save({"w": torch.ones(2)}, step=0)
    expected = torch.rand(1)
    torch.manual_seed(4)
    for loaded in (ck.load(), ms.load(tmp_path), ms.load(f"{tmp_path}@0")):
        assert list(loaded) == ["w"]
    ms.load_into({"w": torch.zeros(2)}, tmp_path)
    with ms.open(tmp_path) as reader:
        assert reader.keys() == ["w"]
    assert not torch.equal(torch.rand(1), expected)  # nothing above touched the generators
    random.seed(0)
    np.random.seed(0)
    ck.load_into({"w": torch.zeros(2)})
    assert torch.equal(torch.rand(1), expected)
    ck.close()


def test_a_torch_state_torch_refuses_rolls_every_generator_back(tmp_path):
    import base64
    import json
    import random

    ck = ms.Checkpoints(tmp_path)
    info = ck.save({"a": 1}, step=0)
    manifest_path = tmp_path / "step0" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["rng"]["torch"] = base64.b64encode(b"short").decode()  # python and numpy are restored first
    manifest_path.write_text(json.dumps(manifest))
    random.seed(11)
    torch.manual_seed(11)
    with pytest.raises(ms.CorruptCheckpointError, match="a generator refused it"):
        ck.load_into({"a": 0}, info.name)
    assert random.random() == random.Random(11).random()
    assert torch.equal(torch.rand(2), torch.rand(2, generator=torch.Generator().manual_seed(11)))
    ck.close()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the restore of CUDA states on a machine without CUDA")
def test_cuda_states_on_a_machine_without_cuda_are_skipped_with_a_warning(tmp_path):
    import base64
    import json

    ck = ms.Checkpoints(tmp_path)
    torch.manual_seed(5)
    ck.save({"a": 1}, step=0)
    expected = torch.rand(3)
    manifest_path = tmp_path / "step0" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["rng"]["cuda"] = [base64.b64encode(bytes(16)).decode()]
    manifest_path.write_text(json.dumps(manifest))
    with pytest.warns(UserWarning, match="CUDA is not available"):
        ck.load_into({"a": 0})
    assert torch.equal(torch.rand(3), expected)  # the CPU generator was restored all the same
    ck.close()
