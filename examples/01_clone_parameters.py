"""Save an MLP's parameters and load them into a clone: the outputs are equal.

    python examples/01_clone_parameters.py [DIR]
"""

import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import modelsafe as ms


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))


def main(directory: Path) -> None:
    torch.manual_seed(0)
    model = mlp()
    path = directory / "mlp.safetensors"
    ms.save(model.state_dict(), path)  # a valid safetensors file; the keys are the state_dict keys

    clone = mlp()  # different random weights until we load
    report = ms.load_into(clone, path)  # strict: every key must match in name, shape and dtype
    print(f"loaded {len(report.loaded)} tensors: {', '.join(report.loaded)}")

    x = torch.randn(5, 8)
    assert torch.equal(model(x), clone(x))
    print("outputs equal: True")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp))
