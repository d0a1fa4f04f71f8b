#!/usr/bin/env python
"""How fast do ``modelsafe ls`` of a big run and ``modelsafe show`` of a file with many tensors answer?

Measured side by side in one run, each as a ratio to the least any such command must do:

* ``ls RUN`` (a run of 1,000 checkpoints) against reading and parsing every checkpoint's
  ``manifest.json`` with ``json.load``;
* ``show FILE`` (100,000 tensors) against reading and parsing the file's JSON header.

The commands run in this process through the same entry point as ``modelsafe`` (stdout
captured); the median of ``--repeat`` runs is reported, with wall and CPU time.  The former
test budget ("under 2 s") is shown as information beside the ratios.

    python bench/bench_cli.py              # 1,000 checkpoints, 100,000 tensors
    python bench/bench_cli.py --tiny       # small sizes (the smoke test)
    python bench/bench_cli.py --json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

import modelsafe as ms
from modelsafe.cli import main

BUDGET_S = 2.0


def make_run(path: str, checkpoints: int) -> None:
    """A run of ``checkpoints``: 20 written by Checkpoints.save, the rest copies with their own manifest."""
    written = min(20, checkpoints)
    ck = ms.Checkpoints(path, monitor="loss", name="step{step:05d}")
    for step in range(written):
        ck.save({"w": np.full(4, step, np.float32)}, step=step, metrics={"loss": 1.0 / (step + 1)})
    ck.close()
    template = os.path.join(path, f"step{written - 1:05d}")
    with open(os.path.join(template, "manifest.json")) as f:
        manifest = json.load(f)
    for step in range(written, checkpoints):
        name = f"step{step:05d}"
        target = os.path.join(path, name)
        os.mkdir(target)
        for entry in os.listdir(template):
            if entry != "manifest.json":
                shutil.copyfile(os.path.join(template, entry), os.path.join(target, entry))
        manifest["checkpoint"].update(name=name, step=step, metrics={"loss": 1.0 / (step + 1)})
        with open(os.path.join(target, "manifest.json"), "w") as f:
            json.dump(manifest, f)


def read_manifests(run: str) -> None:
    for name in sorted(os.listdir(run)):
        manifest = os.path.join(run, name, "manifest.json")
        if os.path.isfile(manifest):
            with open(manifest) as f:
                json.load(f)


def read_header(path: str) -> None:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        json.loads(f.read(size))


def command(argv: list[str]) -> Callable[[], None]:
    def run() -> None:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
            main(argv)
    return run


def measure(fn: Callable[[], None], repeat: int) -> dict[str, float]:
    fn()  # warm-up: imports, page cache
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"wall": statistics.median(walls), "cpu": statistics.median(cpus)}


def main_bench(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="small sizes, one run (the smoke test)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    checkpoints, tensors, repeat = (30, 1_000, 1) if args.tiny else (1_000, 100_000, args.repeat)
    results = []
    with tempfile.TemporaryDirectory(prefix="modelsafe-bench-cli-") as scratch:
        run = os.path.join(scratch, "run")
        make_run(run, checkpoints)
        big = os.path.join(scratch, "many.safetensors")
        ms.save({f"layers.{i}.weight": np.full(4, i, np.float32) for i in range(tensors)}, big)
        cases = [
            (f"ls of {checkpoints:,} checkpoints", command(["ls", run]), lambda: read_manifests(run)),
            (f"ls --json of {checkpoints:,} checkpoints", command(["ls", run, "--json"]), lambda: read_manifests(run)),
            (f"show of {tensors:,} tensors", command(["show", big]), lambda: read_header(big)),
            (f"show --json of {tensors:,} tensors", command(["show", big, "--json"]), lambda: read_header(big)),
        ]
        for label, fn, baseline in cases:
            took, base = measure(fn, repeat), measure(baseline, repeat)
            results.append({"case": label, "wall_s": took["wall"], "cpu_s": took["cpu"], "baseline_wall_s": base["wall"],
                            "ratio": took["wall"] / base["wall"] if base["wall"] else None,
                            "under_budget": took["wall"] < BUDGET_S})
    report = {"budget_s": BUDGET_S, "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None, "results": results}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{'case':36} {'wall s':>8} {'cpu s':>8} {'json-only s':>12} {'x json-only':>12}  info: under {BUDGET_S:g} s")
        for r in results:
            ratio = f"{r['ratio']:.1f}" if r["ratio"] is not None else "-"
            print(f"{r['case']:36} {r['wall_s']:8.3f} {r['cpu_s']:8.3f} {r['baseline_wall_s']:12.4f} {ratio:>12}  "
                  f"{'yes' if r['under_budget'] else 'no'}")
    return report


if __name__ == "__main__":
    main_bench(sys.argv[1:])
