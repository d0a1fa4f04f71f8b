"""bench/bench_jax.py keeps running: a tiny run checks every contender's round trip and prints ratios."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flax")
pytest.importorskip("orbax.checkpoint")

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_jax.py"


def test_tiny_run_compares_every_contender_with_flax_serialization(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--json", "--dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    names = [row["name"] for row in result["rows"]]
    assert names == ["flax.serialization", "ms", "ms verify=False", "orbax StandardCheckpointer"]
    assert result["rows"][0]["save_ratio"] == result["rows"][0]["load_ratio"] == 1.0
    assert all(row["save"] > 0 and row["load"] > 0 for row in result["rows"])
    assert list(tmp_path.iterdir()) == [], "the bench left files behind"
