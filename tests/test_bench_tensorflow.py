"""bench/bench_tensorflow.py keeps running: a tiny run prints its JSON (no timing is asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorflow")
SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_tensorflow.py"


def test_tiny_run_reports_every_contender_and_both_ratios(tmp_path):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--json", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    ops = [row["op"] for row in result["rows"]]
    assert {"keras save_weights", "keras load_weights", "ms.save(model)", "ms.load_into(model)"} <= set(ops)
    assert all(len(row["runs"]) == result["repeat"] and row["median_s"] > 0 for row in result["rows"])
    assert set(result["ratios"]) == {"save", "load"} and all(r > 0 for r in result["ratios"].values())
    assert os.listdir(tmp_path) == [], "the bench left files behind"
