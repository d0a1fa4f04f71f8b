"""Reuse the first layers of one network in a different network: one ms.load_into call.

    python examples/04_transfer_layers.py [DIR]
"""

import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import modelsafe as ms


class Pretrained(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(10, 16)
        self.hidden2 = nn.Linear(16, 16)
        self.classifier = nn.Linear(16, 3)


class NewTask(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.regressor = nn.Linear(16, 1)  # new head, different shape: stays as initialised


def main(directory: Path) -> None:
    torch.manual_seed(0)
    source = Pretrained()
    path = directory / "pretrained.safetensors"
    ms.save(source.state_dict(), path)

    target = NewTask()
    report = ms.load_into(
        target,
        path,
        select=["hidden.weight", "hidden.bias", "hidden2.weight", "hidden2.bias"],
        rename={"hidden.": "encoder.0.", "hidden2.": "encoder.2."},
    )
    print(f"copied: {', '.join(report.loaded)}")
    assert torch.equal(target.encoder[0].weight, source.hidden.weight)
    assert torch.equal(target.encoder[2].bias, source.hidden2.bias)

    # without select, the report says exactly what does not fit
    partial = ms.load_into(NewTask(), path, strict=False)
    print(f"non-strict load: {partial.describe()}")


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp))
