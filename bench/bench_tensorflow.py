"""Keras: save/load time of a model with modelsafe vs Keras' own ``model.save_weights`` / ``load_weights``.

The model is an MLP of ``--width`` (default 2048) with ``--depth`` (default 8) hidden layers
(about 34M float32 parameters, 128 MiB) plus its Adam state after one training step.  Each
contender runs ``--repeat`` times (median, every run listed), with one untimed warm-up:

* **keras save_weights / load_weights**: ``model.weights.h5`` (weights only, h5py);
* **ms.save(model) / ms.load_into(model)**: the same weights into the same model;
* **ms.save({model, optimizer}) / ms.load**: the training state, rebuilt from its config
  (there is no Keras-weights equivalent: shown for scale, no ratio).

Ratios are modelsafe time / Keras time (below 1: modelsafe is faster).  Saves are not fsynced
by either side (Keras cannot), so both measure the same work.

    python bench/bench_tensorflow.py               # the figures in bench/README.md
    python bench/bench_tensorflow.py --tiny --json # the smoke test's sizes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import modelsafe as ms  # noqa: E402


def build(width: int, depth: int) -> keras.Model:
    layers = [keras.Input((width,))] + [keras.layers.Dense(width, activation="relu") for _ in range(depth)]
    model = keras.Sequential(layers + [keras.layers.Dense(10)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    x = np.random.default_rng(0).random((8, width), dtype=np.float32)
    model.fit(x, np.zeros((8, 10), np.float32), epochs=1, verbose=0)  # the optimizer has state
    return model


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    fn()  # warm-up
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return runs


def run(width: int, depth: int, repeat: int, directory: str) -> dict:
    model = build(width, depth)
    h5, single, state = (os.path.join(directory, n) for n in ("m.weights.h5", "m.safetensors", "state.safetensors"))
    nbytes = sum(int(np.prod(v.shape)) * 4 for v in model.weights)
    results = {
        "keras save_weights": timed(lambda: model.save_weights(h5), repeat),
        "ms.save(model)": timed(lambda: ms.save(model, single), repeat),
        "keras load_weights": timed(lambda: model.load_weights(h5), repeat),
        "ms.load_into(model)": timed(lambda: ms.load_into(model, single), repeat),
        "ms.save(model+optimizer)": timed(lambda: ms.save({"model": model, "optimizer": model.optimizer}, state), repeat),
        "ms.load(model+optimizer)": timed(lambda: ms.load(state), repeat),
    }
    medians = {k: statistics.median(v) for k, v in results.items()}
    return {
        "width": width, "depth": depth, "weight_bytes": nbytes, "repeat": repeat,
        "rows": [{"op": k, "median_s": medians[k], "runs": v} for k, v in results.items()],
        "ratios": {"save": medians["ms.save(model)"] / medians["keras save_weights"],
                   "load": medians["ms.load_into(model)"] / medians["keras load_weights"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where the temporary files go")
    parser.add_argument("--tiny", action="store_true", help="the smoke test's sizes")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.tiny:
        args.width, args.depth, args.repeat = 16, 2, 2
    directory = tempfile.mkdtemp(dir=args.dir)
    try:
        result = run(args.width, args.depth, args.repeat, directory)
    finally:
        shutil.rmtree(directory)
    if args.json:
        json.dump(result, sys.stdout)
        return
    print(f"MLP width {result['width']} depth {result['depth']}: {result['weight_bytes'] / 2**20:.1f} MiB of weights, "
          f"median of {result['repeat']}")
    for row in result["rows"]:
        print(f"  {row['op']:<28} {row['median_s'] * 1000:9.1f} ms")
    print(f"ratio save (ms / keras): {result['ratios']['save']:.2f}x   load: {result['ratios']['load']:.2f}x")


if __name__ == "__main__":
    main()
