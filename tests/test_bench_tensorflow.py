"""bench/bench_tensorflow.py keeps running: a tiny run prints its JSON (no timing is asserted).

It runs in this process (tests/script_support.py), where TensorFlow is imported already.
"""

import json
import os
from pathlib import Path

import pytest

from script_support import run_script

pytest.importorskip("tensorflow")
SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_tensorflow.py"


def test_tiny_run_reports_every_contender_and_both_ratios(tmp_path):
    result = json.loads(run_script(SCRIPT, "--tiny", "--json", "--dir", tmp_path))
    ops = [row["op"] for row in result["rows"]]
    assert {"keras save_weights", "keras load_weights", "ms.save(model)", "ms.load_into(model)"} <= set(ops)
    assert all(len(row["runs"]) == result["repeat"] and row["median_s"] > 0 for row in result["rows"])
    assert set(result["ratios"]) == {"save", "load"} and all(r > 0 for r in result["ratios"].values())
    assert os.listdir(tmp_path) == [], "the bench left files behind"
