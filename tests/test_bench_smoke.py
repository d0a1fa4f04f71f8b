"""bench/bench_io.py keeps running: a tiny run prints its table and its JSON (no timing is asserted).

It runs in this process (tests/script_support.py), where torch is imported already.
"""

import json
import os
from pathlib import Path

import pytest

from script_support import run_script

pytest.importorskip("torch")
pytest.importorskip("safetensors")
pytest.importorskip("psutil")

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_io.py"
OPERATIONS = [
    "plain write+fsync", "ms.save (durable)", "torch.save + fsync", "safetensors.save_file + fsync",
    "plain readinto", "ms.load (verify=True)", "ms.load (verify=False)", "safetensors.load_file (mmap)",
    "torch.load", "torch.load (mmap=True)", "ms.open + read one tensor",
]


def _run(tmp_path, *extra):
    return run_script(SCRIPT, "--tiny", "--dir", tmp_path, *extra)  # in this process; its memory child is fresh


def test_tiny_run_prints_every_workload_operation_and_target(tmp_path):
    out = _run(tmp_path)
    for title in ("(a) ", "(b) ", "(c) "):
        assert any(line.startswith(title) for line in out.splitlines()), out
    for op in OPERATIONS:
        assert out.count(op) >= 3, f"{op!r} missing from a workload:\n{out}"
    assert out.count("peak extra memory during save") == 3, out
    targets = [line for line in out.split("\ntargets", 1)[1].splitlines()[1:] if not line.startswith("  (")]
    assert len(targets) >= 10 and all(line.split()[0] in ("PASS", "FAIL", "info") for line in targets), out
    assert sum(line.split()[0] != "info" for line in targets) >= 14, out  # every DESIGN.md target is checked
    assert os.listdir(tmp_path) == [], "the bench left files behind"


def test_json_output_holds_rows_and_ratios(tmp_path):
    result = json.loads(_run(tmp_path, "--json", "--workloads", "a", "--no-memory"))
    assert set(result["workloads"]) == {"a"} and result["memory"] == {}
    assert {("a", op) for op in OPERATIONS} <= {(row["workload"], row["op"]) for row in result["rows"]}
    for row in result["rows"]:
        assert row["seconds"] > 0 and len(row["runs"]) >= 1 and row["gbps"] > 0
        assert (row["ratio"] is None) == (row["baseline"] is None)
    assert result["targets"] and all(t["target"].startswith("(a)") for t in result["targets"])
