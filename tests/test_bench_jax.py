"""bench/bench_jax.py keeps running: a tiny run checks every contender's round trip and prints ratios.

It runs in this process (tests/script_support.py), where JAX is imported already.
"""

import json
from pathlib import Path

import pytest

from script_support import run_script

pytest.importorskip("flax")
pytest.importorskip("orbax.checkpoint")

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "bench_jax.py"


def test_tiny_run_compares_every_contender_with_flax_serialization(tmp_path):
    result = json.loads(run_script(SCRIPT, "--tiny", "--json", "--dir", tmp_path))
    names = [row["name"] for row in result["rows"]]
    assert names == ["flax.serialization", "ms", "ms verify=False", "orbax StandardCheckpointer"]
    assert result["rows"][0]["save_ratio"] == result["rows"][0]["load_ratio"] == 1.0
    assert all(row["save"] > 0 and row["load"] > 0 for row in result["rows"])
    assert list(tmp_path.iterdir()) == [], "the bench left files behind"
