"""MXNet Gluon walk-through: a tensor, a list, a dict, parameters into a clone, the whole model, a Trainer.

The steps of MXNet's own file I/O tutorial (npx.save / npx.load, save_parameters /
load_parameters), with modelsafe: no pickle on load, checksums, and the architecture kept.

    python examples/mxnet_walkthrough.py [DIR]      # needs mxnet 1.9 (pip install 'modelsafe[mxnet]')
"""

import sys
import tempfile
from pathlib import Path

import mxnet as mx
from mxnet import autograd, gluon, np, npx
from mxnet.gluon import nn

import modelsafe as ms


@ms.rebuildable  # remembers the constructor arguments, so ms.load can rebuild it
class MLP(nn.Block):
    def __init__(self, hidden=256, out=10, **kwargs):
        super().__init__(**kwargs)
        self.hidden = nn.Dense(hidden, activation="relu")
        self.output = nn.Dense(out)

    def forward(self, x):
        return self.output(self.hidden(x))


def main(directory: Path) -> None:
    npx.set_np()
    # 1. a tensor, a list, a dict (npx.save / npx.load)
    x = np.arange(4)
    ms.save(x, directory / "x.safetensors")
    print("tensor:", ms.load(directory / "x.safetensors"))
    y = np.zeros(4)
    ms.save([x, y], directory / "x-files.safetensors")
    x2, y2 = ms.load(directory / "x-files.safetensors")
    print("list:", x2, y2)
    ms.save({"x": x, "y": y}, directory / "mydict.safetensors")
    print("dict keys:", sorted(ms.load(directory / "mydict.safetensors")))

    # 2. parameters into a clone built from code (save_parameters / load_parameters)
    mx.random.seed(0)
    net = MLP()
    net.initialize()
    X = np.random.uniform(size=(2, 20))
    Y = net(X)
    ms.save(net, directory / "mlp.safetensors")
    clone = MLP()  # not even initialized: shapes are taken from the file, as load_parameters does
    report = ms.load_into(clone, directory / "mlp.safetensors")
    print(f"loaded {len(report.loaded)} parameters: {', '.join(sorted(report.loaded))}")
    print("clone outputs equal:", bool((clone(X) == Y).all()))

    # 3. the whole model: rebuilt from the file, no code to write
    rebuilt = ms.load(directory / "mlp.safetensors")
    print(f"rebuilt {type(rebuilt).__name__}; outputs equal:", bool((rebuilt(X) == Y).all()))

    # 4. training state: the Trainer's Adam moments, restored into a fresh trainer
    trainer = gluon.Trainer(net.collect_params(), "adam", {"learning_rate": 0.01})
    with autograd.record():
        loss = (net(X) ** 2).sum()
    loss.backward()
    trainer.step(2)
    ms.save({"model": net, "trainer": trainer, "epoch": 1}, directory / "ckpt.safetensors")
    resumed_trainer = gluon.Trainer(clone.collect_params(), "adam", {"learning_rate": 0.01})
    ms.load_into({"model": clone, "trainer": resumed_trainer}, directory / "ckpt.safetensors")
    print("resumed trainer at update", resumed_trainer.optimizer.num_update)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp))
