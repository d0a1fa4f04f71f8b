"""The tutorial steps in TensorFlow / Keras 3: tensors, a list, a dict, parameters into a clone, the whole model.

    python examples/tensorflow_walkthrough.py [DIR]
"""

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up messages

import keras
import numpy as np
import tensorflow as tf

import modelsafe as ms


def net() -> keras.Model:
    return keras.Sequential([keras.Input((20,)), keras.layers.Dense(256, activation="relu"), keras.layers.Dense(10)])


def main(directory: Path) -> None:
    # 1. a tensor, a list of tensors, a dict of tensors
    x = tf.range(4)
    ms.save(x, directory / "x.safetensors")
    print("tensor:", ms.load(directory / "x.safetensors").numpy().tolist())
    y = tf.zeros(4)
    ms.save([x, y], directory / "xy.safetensors")
    x2, y2 = ms.load(directory / "xy.safetensors")
    print("list:", x2.numpy().tolist(), y2.numpy().tolist())
    ms.save({"x": x, "y": y}, directory / "mydict.safetensors")
    print("dict keys:", sorted(ms.load(directory / "mydict.safetensors")))

    # 2. a model's parameters, loaded into a clone built from code
    keras.utils.set_random_seed(0)
    model = net()
    X = tf.random.uniform((2, 20))
    ms.save(model, directory / "mlp.safetensors")
    clone = net()  # other random weights (and other layer names) until we load
    report = ms.load_into(clone, directory / "mlp.safetensors")
    print(f"loaded {len(report.loaded)} variables: {', '.join(report.loaded)}")
    print("clone outputs equal:", bool(np.array_equal(clone(X).numpy(), model(X).numpy())))

    # 3. the architecture too: ms.load rebuilds the model from its Keras config (no pickle, no code from the file)
    rebuilt = ms.load(directory / "mlp.safetensors")
    print(f"rebuilt {type(rebuilt).__name__} with {len(rebuilt.layers)} layers")
    print("rebuilt outputs equal:", bool(np.array_equal(rebuilt(X).numpy(), model(X).numpy())))


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp))
