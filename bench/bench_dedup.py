"""Frozen-base fine-tuning: save time and bytes written per checkpoint, with and without dedup.

A frozen base (``--size`` MiB, default 1024, as 64 MiB float32 tensors) and a trained part
(``--trained`` MiB, default 16, changed before every save) are saved as one checkpoint per
step by:

* **baseline**: write only the trained bytes (one file, fsync) and xxh3 the base: what a
  checkpoint must at least cost when it stores only what changed and checks the rest;
* **ms dedup**: ``ms.Checkpoints(run)`` (the default): unchanged shards are hard-linked;
* **ms dedup=False**: every byte written again;
* **torch.save** and **safetensors save_file** of the whole state, each with an fsync.

Every save is durable (fsync) and preceded by ``os.sync()``.  The first checkpoint of a
run writes everything; the figures are the median over the later ones (``--checkpoints``).
Target: ms dedup within 1.2x of the baseline.

    python bench/bench_dedup.py --size 256          # 256 MiB base, 16 MiB trained
    python bench/bench_dedup.py --tiny --json        # the smoke test's sizes
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

import numpy as np
import xxhash

import modelsafe as ms
from modelsafe.checkpoint_dir import disk_usage

MIB = 1 << 20
TARGET = 1.2


def make_base(mib: int) -> dict:
    tensor_mib = min(64, mib)
    count = max(1, mib // tensor_mib)
    rng = np.random.default_rng(0)
    return {f"layer{i}": rng.standard_normal(tensor_mib * MIB // 4, dtype=np.float32) for i in range(count)}


def make_trained(mib: float) -> dict:
    per = max(1, int(mib * MIB) // 4 // 4)
    return {f"adapter{i}": np.zeros(per, dtype=np.float32) for i in range(4)}


def train_step(trained: dict, step: int) -> None:
    for value in trained.values():
        value += np.float32(step + 1)


def nbytes(tree: dict) -> int:
    return sum(v.nbytes for v in tree.values())


def fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Contender:
    """One way to save a checkpoint: ``save(step)`` returns the bytes written (or a function measuring them)."""

    def __init__(self, name: str, save: Callable[[int], int]) -> None:
        self.name, self.save = name, save
        self.seconds: list[float] = []
        self.written: list[int] = []


def contenders(base: dict, trained: dict, directory: str) -> list[Contender]:
    def baseline(step: int) -> int:
        for value in base.values():
            xxhash.xxh3_64_hexdigest(value)
        path = os.path.join(directory, f"baseline-{step}.bin")
        with open(path, "wb") as f:
            for value in trained.values():
                f.write(memoryview(value).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        return nbytes(trained)

    def with_ms(dedup: bool) -> Callable[[int], Callable[[], int]]:
        ck = ms.Checkpoints(os.path.join(directory, f"run-dedup-{dedup}"), dedup=dedup)

        def save(step: int) -> Callable[[], int]:
            info = ck.save({"base": base, "trained": trained}, step=step)

            def written() -> int:  # measured after the clock stops: what ls shows as new bytes
                paths = [os.fspath(i.path) for i in ck.list()]
                return disk_usage(paths)[0][paths.index(os.fspath(info.path))]
            return written
        return save

    out = [Contender("baseline: changed bytes + hash the rest", baseline),
           Contender("ms dedup", with_ms(True)), Contender("ms dedup=False", with_ms(False))]
    try:
        import torch
        from safetensors.torch import save_file
    except ImportError:
        return out
    flat = {**{f"base.{k}": torch.from_numpy(v) for k, v in base.items()},
            **{f"trained.{k}": torch.from_numpy(v) for k, v in trained.items()}}

    def torch_save(step: int) -> int:
        path = os.path.join(directory, f"torch-{step}.pt")
        torch.save(flat, path)
        fsync_file(path)
        return os.path.getsize(path)

    def safetensors_save(step: int) -> int:
        path = os.path.join(directory, f"st-{step}.safetensors")
        save_file(flat, path)
        fsync_file(path)
        return os.path.getsize(path)

    return out + [Contender("torch.save + fsync", torch_save), Contender("safetensors save_file + fsync", safetensors_save)]


def run(base_mib: int, trained_mib: float, checkpoints: int, directory: str) -> dict:
    base, trained = make_base(base_mib), make_trained(trained_mib)
    work = tempfile.mkdtemp(prefix="bench-dedup-", dir=directory)
    try:
        players = contenders(base, trained, work)
        for step in range(checkpoints):
            train_step(trained, step)
            for player in players:
                os.sync()
                start = time.perf_counter()
                written = player.save(step)
                player.seconds.append(time.perf_counter() - start)
                player.written.append(written() if callable(written) else written)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    baseline = statistics.median(players[0].seconds[1:])
    rows = []
    for player in players:
        seconds = statistics.median(player.seconds[1:])
        rows.append({"op": player.name, "seconds": seconds, "runs": player.seconds, "first_seconds": player.seconds[0],
                     "bytes_written": int(statistics.median(player.written[1:])), "first_bytes_written": player.written[0],
                     "ratio_to_baseline": seconds / baseline})
    dedup = next(r for r in rows if r["op"] == "ms dedup")
    return {"base_mib": base_mib, "trained_mib": trained_mib, "checkpoints": checkpoints, "rows": rows,
            "target": {"what": f"ms dedup within {TARGET}x of the baseline", "ratio": dedup["ratio_to_baseline"],
                       "pass": dedup["ratio_to_baseline"] <= TARGET}}


def print_table(result: dict) -> None:
    print(f"frozen base {result['base_mib']} MiB, trained {result['trained_mib']} MiB, "
          f"{result['checkpoints']} checkpoints (median of checkpoints 2..{result['checkpoints']})")
    print(f"{'save':42} {'seconds':>9} {'x baseline':>10} {'MiB written':>12} {'first: s':>9} {'MiB':>8}")
    for row in result["rows"]:
        print(f"{row['op']:42} {row['seconds']:9.3f} {row['ratio_to_baseline']:10.2f} "
              f"{row['bytes_written'] / MIB:12.1f} {row['first_seconds']:9.3f} {row['first_bytes_written'] / MIB:8.1f}")
    target = result["target"]
    print(f"{'PASS' if target['pass'] else 'FAIL'} {target['what']}: {target['ratio']:.2f}x")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1024, help="frozen base in MiB (default 1024)")
    parser.add_argument("--trained", type=float, default=16, help="trained part in MiB (default 16)")
    parser.add_argument("--checkpoints", type=int, default=5, help="checkpoints per contender (default 5)")
    parser.add_argument("--dir", default=None, help="where the runs go (default: the system temp directory)")
    parser.add_argument("--tiny", action="store_true", help="8 MiB base, 1 MiB trained, 3 checkpoints (smoke test)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.tiny:
        args.size, args.trained, args.checkpoints = 8, 1, 3
    if args.checkpoints < 2:
        parser.error("--checkpoints must be at least 2 (the first one writes everything)")
    result = run(args.size, args.trained, args.checkpoints, args.dir)
    if args.json:
        json.dump(result, sys.stdout, indent=1)
        print()
    else:
        print_table(result)


if __name__ == "__main__":
    main()
