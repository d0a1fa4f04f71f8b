"""examples/mxnet_walkthrough.py runs in its own interpreter and shows what it promises."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mxnet_walkthrough.py"


def test_the_walkthrough_runs(tmp_path):
    out = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    for line in ["tensor: [0. 1. 2. 3.]", "dict keys: ['x', 'y']",
                 "loaded 4 parameters: hidden.bias, hidden.weight, output.bias, output.weight",
                 "clone outputs equal: True", "rebuilt MLP; outputs equal: True", "resumed trainer at update 1"]:
        assert line in out.stdout, out.stdout
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == [
        "ckpt.safetensors", "mlp.safetensors", "mydict.safetensors", "x-files.safetensors", "x.safetensors"]
