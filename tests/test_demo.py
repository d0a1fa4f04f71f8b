"""``modelsafe demo``: trains, is killed mid-save, resumes, lists and exports — and says so."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import modelsafe as ms

pytest.importorskip("torch")


@pytest.mark.timeout(180)
def test_demo_runs_the_main_job(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "modelsafe", "demo", str(tmp_path)],
                          capture_output=True, text=True, timeout=170, env=dict(os.environ, COLUMNS="200"))
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "training process ended with SIGKILL" in out
    assert "resumed from epoch005-val_loss" in out
    assert "leftovers of the killed save after resuming: none" in out
    assert "demo finished" in out
    # the run on disk: keep_last=2 plus keep_best=2, no leftovers, the best exported
    ck = ms.Checkpoints(tmp_path / "run", monitor="val_loss")
    infos = ck.list()
    assert 2 <= len(infos) <= 4 and infos[-1].step == 11
    assert not [n for n in os.listdir(tmp_path / "run") if n.startswith(".") and "modelsafe-" in n and "tmp" in n]
    best = ck.best()
    assert f"exported {best.name}" in out
    with pytest.raises(ms.UnknownClassError, match="modelsafe.demo.Regressor"):
        ms.load(tmp_path / "best-model.safetensors")  # nothing runs unless the class is registered
    import torch

    from modelsafe.cli.demo import _define_model

    _define_model(torch)  # what `import` of the user's model module does
    model = ms.load(tmp_path / "best-model.safetensors")
    assert type(model).__name__ == "Regressor"
    with ms.open(tmp_path / "best-model.safetensors") as r:
        assert r.metadata["exported_from"]["checkpoint"] == best.name


def test_demo_without_torch_says_how_to_install_it(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from modelsafe.cli import main\n"
        f"main(['demo', {str(tmp_path)!r}])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "torch is not installed" in proc.stderr and "pip install 'modelsafe[torch]'" in proc.stderr
