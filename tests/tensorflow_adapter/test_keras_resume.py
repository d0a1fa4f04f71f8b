"""Another process: models rebuilt by ms.load give identical outputs; a resumed fit equals an uninterrupted one."""

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
from keras_models import BUILDERS

import modelsafe as ms

HERE = Path(__file__).resolve().parent
CHILD = r'''
import sys, numpy as np
sys.path.insert(0, sys.argv[2])
import keras_models  # registers the subclassed model class with Keras, as the user's code would
import keras, modelsafe as ms
work = sys.argv[1]
x, y = np.load(f"{work}/data.npy", allow_pickle=False), np.load(f"{work}/target.npy", allow_pickle=False)
outputs = {}
for name in sorted(keras_models.BUILDERS):
    outputs[name] = ms.load(f"{work}/{name}.safetensors")(x, training=False).numpy()
state = ms.load(f"{work}/train.safetensors")
model, opt = state["model"], state["optimizer"]
model.compile(optimizer=opt, loss="mse")
model.fit(x, y, epochs=state["epoch"] + 1, initial_epoch=state["epoch"], batch_size=8, shuffle=False, verbose=0)
np.savez(f"{work}/child.npz", *[v.numpy() for v in model.weights], **{"out_" + k: v for k, v in outputs.items()})
'''


def _compiled():
    keras.utils.set_random_seed(5)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def test_rebuilt_models_and_a_resumed_fit_match_in_a_fresh_process(tmp_path, batch):
    x, y = batch
    np.save(tmp_path / "data.npy", x)
    np.save(tmp_path / "target.npy", y)
    expected = {}
    for name, build in BUILDERS.items():
        keras.utils.set_random_seed(7)
        model = build()
        ms.save(model, tmp_path / f"{name}.safetensors")
        expected[name] = model(x, training=False).numpy()
    model = _compiled()
    model.fit(x, y, epochs=1, batch_size=8, shuffle=False, verbose=0)
    ms.save({"model": model, "optimizer": model.optimizer, "epoch": 1}, tmp_path / "train.safetensors")
    model.fit(x, y, epochs=2, initial_epoch=1, batch_size=8, shuffle=False, verbose=0)  # uninterrupted

    (tmp_path / "child.py").write_text(CHILD)
    out = subprocess.run([sys.executable, str(tmp_path / "child.py"), str(tmp_path), str(HERE)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    child = np.load(tmp_path / "child.npz")
    for name, value in expected.items():
        assert np.array_equal(child[f"out_{name}"], value), name
    resumed = [child[f"arr_{i}"] for i in range(len(model.weights))]
    assert all(a.tobytes() == v.numpy().tobytes() for a, v in zip(resumed, model.weights))
