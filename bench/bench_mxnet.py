#!/usr/bin/env python
"""Time modelsafe against MXNet's own savers on a Gluon net's parameters, side by side.

    python bench/bench_mxnet.py            # an MLP of 4 x Dense(2048): 64 MiB of float32 parameters
    python bench/bench_mxnet.py --tiny     # the smoke test's sizes, one repetition
    python bench/bench_mxnet.py --json     # machine-readable results

Saves: ``net.save_parameters`` (the baseline), ``mx.nd.save`` of the parameter dict (the
file format ``npx.save`` writes) and ``ms.save(net)`` (atomic and durable: fsync +
rename).  MXNet's savers do not fsync; they are also timed with an ``fsync`` of the file
added.  Loads: ``net.load_parameters`` (the baseline), ``mx.nd.load``, ``ms.load_into(net,
path)`` (checksums verified) into an initialized net, and ``ms.load(path)`` (the net rebuilt
from its recipe; compare it with "build net + load_parameters", the same work by hand).
Every load waits for MXNet's asynchronous engine (``mx.nd.waitall``).  Each figure is
the median of ``--repeat`` runs after one untimed warm-up; ratios are against the
baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import mxnet as mx
from mxnet.gluon import nn

import modelsafe as ms


def make_net(width: int, depth: int, *, init: bool = True) -> nn.Block:
    net = ms.build(nn.HybridSequential)
    for _ in range(depth):
        net.add(ms.build(nn.Dense, width, in_units=width, activation="relu"))
    if init:
        net.initialize(mx.init.Normal(0.02))
        net(mx.nd.ones((1, width)))
    return net


def fsynced(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def median_time(fn: Callable[[], object], repeat: int) -> tuple[float, list[float]]:
    fn()  # warm-up (not timed)
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        mx.nd.waitall()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), runs


def run(width: int, depth: int, repeat: int, directory: Path) -> dict:
    net = make_net(width, depth)
    clone = make_net(width, depth)
    arrays = {k: p.data() for k, p in net._collect_params_with_prefix().items()}
    nbytes = sum(a.size * a.dtype(0).itemsize for a in arrays.values())
    mxp, ndp, msp = directory / "net.params", directory / "net.nd", directory / "net.safetensors"

    def save_parameters(sync: bool) -> None:
        net.save_parameters(str(mxp))
        if sync:
            fsynced(mxp)

    def nd_save(sync: bool) -> None:
        mx.nd.save(str(ndp), arrays)
        if sync:
            fsynced(ndp)

    saves = {
        "net.save_parameters": lambda: save_parameters(False),
        "net.save_parameters + fsync": lambda: save_parameters(True),
        "mx.nd.save (npx.save's format)": lambda: nd_save(False),
        "mx.nd.save + fsync": lambda: nd_save(True),
        "ms.save(net) (durable)": lambda: ms.save(net, msp),
    }
    loads = {
        "net.load_parameters": lambda: clone.load_parameters(str(mxp)),
        "build net + load_parameters": lambda: make_net(width, depth, init=False).load_parameters(str(mxp)),
        "mx.nd.load": lambda: mx.nd.load(str(ndp)),
        "ms.load_into(net, path)": lambda: ms.load_into(clone, msp),
        "ms.load(path) (rebuilds the net)": lambda: ms.load(msp),
    }
    results = {"bytes": int(nbytes), "tensors": len(arrays), "save": {}, "load": {}}
    for kind, contenders, base in (("save", saves, "net.save_parameters"), ("load", loads, "net.load_parameters")):
        for name, fn in contenders.items():
            secs, runs = median_time(fn, repeat)
            results[kind][name] = {"seconds": secs, "runs": runs}
        for name, entry in results[kind].items():
            entry["vs_baseline"] = results[kind][base]["seconds"] / entry["seconds"]  # > 1: faster than the baseline
    return results


def print_table(results: dict) -> None:
    mib = results["bytes"] / (1 << 20)
    print(f"Gluon MLP parameters: {mib:.1f} MiB in {results['tensors']} tensors")
    for kind in ("save", "load"):
        print(f"\n{kind:<36} {'median ms':>10} {'MiB/s':>9} {'speed vs baseline':>18}")
        for name, entry in results[kind].items():
            ms_ = entry["seconds"] * 1e3
            print(f"{name:<36} {ms_:>10.1f} {mib / entry['seconds']:>9.0f} {entry['vs_baseline']:>17.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None, help="where the files go (default: a temp directory)")
    parser.add_argument("--tiny", action="store_true", help="small sizes, one run each (the smoke test)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.tiny:
        args.width, args.depth, args.repeat = 16, 2, 1
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        results = run(args.width, args.depth, args.repeat, Path(tmp))
    if args.json:
        json.dump(results, sys.stdout, indent=1)
        print()
    else:
        print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
