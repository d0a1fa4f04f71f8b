"""Save a whole model; load it elsewhere without knowing its constructor arguments.

The class is decorated with @ms.rebuildable, so the file holds a *recipe* (the
class's stable name and the arguments it was built with) beside the weights.
Loading runs in a fresh process that knows the class but not the arguments.

    python examples/02_whole_model.py [DIR]
"""

import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

import modelsafe as ms


@ms.rebuildable(name="examples.TextClassifier")
class TextClassifier(nn.Module):
    def __init__(self, vocab: int, dim: int, classes: int, *, dropout: float = 0.1) -> None:
        super().__init__()
        self.embed = nn.EmbeddingBag(vocab, dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.embed(tokens)))


TOKENS = torch.tensor([[1, 5, 7, 2], [9, 9, 3, 0]])


def save(path: Path) -> None:
    torch.manual_seed(0)
    model = TextClassifier(vocab=100, dim=16, classes=3, dropout=0.2).eval()
    ms.save({"model": model, "vocab_size": 100}, path, metadata={"task": "demo"})
    ms.save(model(TOKENS).detach(), path.with_suffix(".expected.safetensors"))  # for the check below only
    print(f"saved {path.name}")


def load(path: Path) -> None:
    model = ms.load(path)["model"]  # no constructor arguments needed here
    print(f"rebuilt {type(model).__name__}: embed={tuple(model.embed.weight.shape)}, dropout={model.drop.p}")
    expected = ms.load(path.with_suffix(".expected.safetensors"))
    assert torch.equal(model(TOKENS), expected)
    print("outputs equal: True")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "load":
        load(Path(sys.argv[2]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp)
            save(directory / "classifier.safetensors")
            # a fresh interpreter: nothing but the class definition is shared
            subprocess.run([sys.executable, __file__, "load", str(directory / "classifier.safetensors")], check=True)
