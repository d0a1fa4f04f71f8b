"""Model + optimizer + scheduler: train, save with metadata, resume in a new process.

    python examples/03_train_and_resume.py [DIR]

The first process trains 3 epochs and saves everything in one file; the second
process loads it — a working model, an optimizer bound to that model's parameters
with its state restored, a scheduler bound to that optimizer, the RNG states — and
trains 3 more epochs.
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import modelsafe as ms
from modelsafe.rng import RNGState


@ms.rebuildable(name="examples.Regressor")
class Regressor(nn.Module):
    def __init__(self, d_in: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Dropout(0.1), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def epoch(model, optimizer, scheduler) -> float:
    model.train()
    total = 0.0
    for _ in range(10):
        x = torch.randn(32, 4)
        y = x.sum(dim=1, keepdim=True)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        optimizer.step()
        total += loss.item()
    scheduler.step()
    return total / 10


def first_run(path: Path) -> None:
    torch.manual_seed(0)
    model = Regressor(4, 32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    for e in range(3):
        loss = epoch(model, optimizer, scheduler)
        print(f"epoch {e}: loss {loss:.4f} lr {scheduler.get_last_lr()[0]:.4g}")
    ms.save(
        {"model": model, "optimizer": optimizer, "scheduler": scheduler, "rng": RNGState.capture(), "epoch": 3, "loss": loss},
        path,
        metadata={"run": "example-3"},
    )


def resume(path: Path) -> None:
    state = ms.load(path)
    model, optimizer, scheduler = state["model"], state["optimizer"], state["scheduler"]
    state["rng"].restore()
    assert scheduler.optimizer is optimizer
    assert optimizer.param_groups[0]["params"][0] is model.net[0].weight
    with ms.open(path) as reader:
        print(f"resumed at epoch {state['epoch']} (loss {state['loss']:.4f}); metadata {reader.metadata}")
    for e in range(state["epoch"], state["epoch"] + 3):
        loss = epoch(model, optimizer, scheduler)
        print(f"epoch {e}: loss {loss:.4f} lr {scheduler.get_last_lr()[0]:.4g}")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "resume":
        resume(Path(sys.argv[2]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp)
            first_run(directory / "train-state.safetensors")
            subprocess.run([sys.executable, __file__, "resume", str(directory / "train-state.safetensors")], check=True)
