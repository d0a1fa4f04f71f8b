"""bench/bench_mxnet.py keeps running: a tiny run prints every contender and a ratio (no timing is asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "bench_mxnet.py"


def _run(tmp_path, *extra) -> str:
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--dir", str(tmp_path), *extra],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_tiny_run_prints_every_contender(tmp_path):
    out = _run(tmp_path)
    for name in ["net.save_parameters", "mx.nd.save", "ms.save(net) (durable)", "net.load_parameters", "build net + load_parameters", "mx.nd.load",
                 "ms.load_into(net, path)", "ms.load(path) (rebuilds the net)"]:
        assert name in out, out
    assert "1.00x" in out  # the baseline against itself


def test_json_has_a_ratio_per_contender(tmp_path):
    results = json.loads(_run(tmp_path, "--json"))
    assert results["tensors"] == 4 and results["bytes"] == 2 * (16 * 16 + 16) * 4  # two Dense(16) layers of float32
    for kind in ("save", "load"):
        assert all(entry["vs_baseline"] > 0 and len(entry["runs"]) == 1 for entry in results[kind].values())
    assert not list(tmp_path.iterdir()), "the files go into a temporary directory inside --dir, removed afterwards"
