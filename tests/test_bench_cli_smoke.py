"""bench/bench_cli.py keeps running: a tiny run prints one row per command (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_cli.py"
pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="bench/ is not shipped in the sdist")


def test_tiny_run_reports_every_command_with_a_ratio():
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--json"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    cases = [r["case"] for r in report["results"]]
    assert [c.split(" of ")[0] for c in cases] == ["ls", "ls --json", "show", "show --json"]
    assert all(r["ratio"] is not None and r["wall_s"] > 0 for r in report["results"])
