"""Every script in examples/ runs, in its own interpreter, and shows what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
EXPECTED = {
    "01_clone_parameters.py": ["loaded 4 tensors", "outputs equal: True"],
    "02_whole_model.py": ["rebuilt TextClassifier: embed=(100, 16), dropout=0.2", "outputs equal: True"],
    "03_train_and_resume.py": ["resumed at epoch 3", "{'run': 'example-3'}", "epoch 5: loss"],
    "04_transfer_layers.py": ["copied: encoder.0.weight, encoder.0.bias, encoder.2.weight, encoder.2.bias", "unexpected in the file"],
    "05_jax_walkthrough.py": ["array: [0. 1. 2. 3.]", "list: [Array([0., 1., 2., 3.], dtype=float32), Array([1, 1], dtype=bfloat16)]",
                              "'y': Array([0, 0, 0], dtype=int8)", "outputs equal: True",
                              "optax state: ScaleByAdamState at step 1", "resumed step equal: True"],
    "tensorflow_walkthrough.py": ["tensor: [0, 1, 2, 3]", "list: [0, 1, 2, 3] [0.0, 0.0, 0.0, 0.0]", "dict keys: ['x', 'y']",
                                  "loaded 4 variables", "clone outputs equal: True", "rebuilt Sequential with 2 layers",
                                  "rebuilt outputs equal: True"],
    "lightning_checkpoints.py": ["checkpoint at epoch 1 step 12", "resumed equals uninterrupted: True"],
    "transformers_trainer.py": ["checkpoints: ['step4']", "resumed equals uninterrupted: True"],
    "pretrained_directory.py": ["load_into: all 39 keys match", "outputs equal: True", "embedding rows 0-1: (2, 16)"],
    "stateful_dataloader.py": ["resumed equals uninterrupted: True"],
}


def test_every_example_is_listed():
    # mxnet_walkthrough.py runs in tests/mxnet_adapter, in .venv-mxnet (MXNet needs numpy<1.24)
    assert sorted(p.name for p in EXAMPLES.glob("*.py") if p.name != "mxnet_walkthrough.py") == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs(tmp_path, name):
    out = subprocess.run([sys.executable, str(EXAMPLES / name), str(tmp_path)], capture_output=True, text=True, timeout=400)  # fits on a busy machine
    assert out.returncode == 0, out.stderr
    for line in EXPECTED[name]:
        assert line in out.stdout, out.stdout
    assert list(tmp_path.glob("*.safetensors")), "the example writes its files into the directory it is given"
