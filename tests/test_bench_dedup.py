"""bench/bench_dedup.py keeps running: a tiny run prints its JSON (no timing is asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_dedup.py"


def test_tiny_run_reports_bytes_written_and_ratios(tmp_path):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--json", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    rows = {row["op"]: row for row in result["rows"]}
    assert {"baseline: changed bytes + hash the rest", "ms dedup", "ms dedup=False"} <= rows.keys()
    trained = rows["baseline: changed bytes + hash the rest"]["bytes_written"]
    # a later checkpoint with dedup writes about the trained part; without, the whole state again
    assert rows["ms dedup"]["bytes_written"] < 2 * trained < rows["ms dedup=False"]["bytes_written"]
    assert rows["ms dedup"]["first_bytes_written"] >= rows["ms dedup=False"]["bytes_written"] - trained
    assert all(row["ratio_to_baseline"] > 0 and len(row["runs"]) == 3 for row in rows.values())
    assert isinstance(result["target"]["pass"], bool)
    assert os.listdir(tmp_path) == [], "the bench left files behind"
