"""``ls`` of a run with 1,000 checkpoints and ``show`` of a file with 100,000 tensors give
complete, correct output (in this process, through the same entry point as ``modelsafe``).

How fast they answer is measured in ``bench/bench_cli.py`` (as ratios to reading the same
manifests and header with ``json``), never asserted here: on a loaded machine a time measures
the neighbours.  With MODELSAFE_SOAK=1 every one of the 1,000 checkpoints is written by
``Checkpoints.save``; by default 20 are, and the rest are copies of the last one with their
own name, step, time and metrics in manifest.json (``ls`` reads exactly those manifests
either way).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil

import numpy as np
import pytest

import modelsafe as ms
from modelsafe.cli import main

CHECKPOINTS = 1_000
TENSORS = 100_000


def run_cli(argv: list[str]) -> str:
    """Run ``modelsafe ARGV`` in this process; check it exits 0; return stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as excinfo:
        main(argv)
    assert excinfo.value.code == 0
    return out.getvalue()


SOAK = os.environ.get("MODELSAFE_SOAK") == "1"  # as the `soak` fixture (function-scoped) says


@pytest.fixture(scope="module")
def big_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("scale") / "run"
    real = CHECKPOINTS if SOAK else 20
    ck = ms.Checkpoints(path, monitor="loss", name="step{step:05d}")
    for step in range(real):
        ck.save({"w": np.full(4, step, np.float32)}, step=step, metrics={"loss": 1.0 / (step + 1), "acc": step / CHECKPOINTS})
    ck.close()
    template = path / f"step{real - 1:05d}"
    manifest = json.loads((template / "manifest.json").read_text())
    for step in range(real, CHECKPOINTS):
        name = f"step{step:05d}"
        target = path / name
        target.mkdir()
        for entry in os.listdir(template):
            if entry != "manifest.json":
                shutil.copyfile(template / entry, target / entry)
        manifest["checkpoint"].update(name=name, step=step, metrics={"loss": 1.0 / (step + 1), "acc": step / CHECKPOINTS})
        (target / "manifest.json").write_text(json.dumps(manifest))
    return path


@pytest.fixture(scope="module")
def big_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scale") / "many.safetensors"
    ms.save({f"layers.{i}.weight": np.full(4, i, np.float32) for i in range(TENSORS)}, path, metadata={"note": "scale"})
    return path


def test_ls_of_1000_checkpoints(big_run):
    out = run_cli(["ls", str(big_run)])
    rows = [line for line in out.splitlines() if "step0" in line]
    assert len(rows) == CHECKPOINTS
    assert "best" in rows[-1] and "latest" in rows[-1]


def test_ls_json_of_1000_checkpoints(big_run):
    out = run_cli(["ls", str(big_run), "--json"])
    assert [c["step"] for c in json.loads(out)["checkpoints"]] == list(range(CHECKPOINTS))


def test_show_of_100000_tensors(big_file):
    out = run_cli(["show", str(big_file)])
    assert f"{TENSORS:,} stored" in out and "layers.99999.weight" in out


def test_show_json_of_100000_tensors(big_file):
    out = run_cli(["show", str(big_file), "--json"])
    document = json.loads(out)
    assert document["totals"] == {"tensors": TENSORS, "names": TENSORS, "bytes": 16 * TENSORS}
