"""bench/bench_distributed.py keeps running: a tiny 2-rank run prints every operation and its ratio (no timing asserted)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_distributed.py"
SRC = Path(__file__).resolve().parents[1] / "src"


def test_tiny_run_reports_each_operation_against_dcp(tmp_path):
    env = dict(os.environ, PYTHONPATH=f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--json", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env=env, start_new_session=True)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["ranks"] == 2 and result["state_bytes"] > 0
    ops = {row["op"]: row for row in result["rows"]}
    assert set(ops) == {"ms.distributed.save", "dcp.save (FileSystemWriter)", "ms.distributed.load_into",
                        "dcp.load (FileSystemReader)"}
    assert ops["dcp.save (FileSystemWriter)"]["ratio_to_dcp"] == 1.0
    assert all(row["ratio_to_dcp"] > 0 and len(row["runs_s"]) == 1 for row in ops.values())
    blocking = {row["op"]: row for row in result["blocking"]}
    assert set(blocking) == {"in-memory copy of the state", "Checkpoints.save, sync", "Checkpoints.save, async (blocked)"}
    assert blocking["Checkpoints.save, sync"]["ratio_to_sync"] == 1.0
    assert all(row["ratio_to_copy"] > 0 and len(row["runs_s"]) == 1 for row in blocking.values())
    assert os.listdir(tmp_path) == [], "the bench left files behind"
