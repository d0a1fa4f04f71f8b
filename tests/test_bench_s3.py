"""bench/bench_s3.py keeps running: a tiny run prints its JSON (no timing is asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_s3.py"


def test_tiny_run_reports_every_operation_with_ratios():
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--json"], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    rows = {row["op"]: row for row in result["rows"]}
    assert set(rows) == {"s3fs upload", "ms.save", "Checkpoints.save", "Checkpoints.save replace",
                         "Checkpoints.save unchanged", "s3fs download",
                         "ms.load",
                         "Checkpoints.load", "s3fs range read", "ms.open + one tensor"}
    assert all(len(row["runs"]) == 2 and row["median_s"] > 0 for row in rows.values())
    assert all(rows[op]["speed_vs_s3fs"] > 0 for op in ("ms.save", "Checkpoints.save", "ms.load", "Checkpoints.load",
                                                          "ms.open + one tensor"))
    assert rows["Checkpoints.save replace"]["vs_new_name"] > 0
    assert result["MiB"] == 2
    opened = {row["op"]: row for row in result["checkpoint_open"]}
    assert set(opened) == {"download dir + ms.open one tensor", "ms.open dir + one tensor (ranges)"}
    by_ranges = opened["ms.open dir + one tensor (ranges)"]
    assert by_ranges["speed_vs_download"] > 0 and 0 < by_ranges["bytes_vs_download"] < 1
