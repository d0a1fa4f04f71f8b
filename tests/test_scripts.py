"""scripts/setup.sh says what it installs, one line per step, and stops when an install fails.

The environment's python is a stub that records its calls, so nothing is installed."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SETUP = ROOT / "scripts" / "setup.sh"

pytestmark = pytest.mark.skipif(not SETUP.exists(), reason="scripts/ is not shipped in the sdist")

STUB = """#!/usr/bin/env bash
echo "$*" >> "{log}"
if [ "$1 $2" = "-m pip" ]; then exit "${{STUB_PIP_RC:-0}}"; fi
exit 0
"""


def run_setup(tmp_path: Path, pip_rc: int = 0) -> tuple[subprocess.CompletedProcess, list[str]]:
    venv, log = tmp_path / "venv", tmp_path / "calls.log"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(STUB.format(log=log))
    python.chmod(0o755)
    env = dict(os.environ, MODELSAFE_VENV=str(venv), STUB_PIP_RC=str(pip_rc))
    proc = subprocess.run(["bash", str(SETUP)], capture_output=True, text=True, env=env, timeout=60)
    return proc, log.read_text().splitlines() if log.exists() else []


def test_setup_says_what_it_installs_before_each_step(tmp_path):
    proc, calls = run_setup(tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split(":")[0] for line in lines] == ["setup"] * len(lines)
    assert any("installing torch" in line for line in lines)
    assert any("installing modelsafe" in line for line in lines)
    assert lines[-1].startswith("setup: ready")
    installs = [c for c in calls if c.startswith("-m pip install")]
    assert len(installs) == 2 and "torch==2.13.0" in installs[0] and ".[dev]" in installs[1]


def test_setup_stops_when_an_install_fails(tmp_path):
    proc, calls = run_setup(tmp_path, pip_rc=1)
    assert proc.returncode != 0
    assert "installing torch" in proc.stdout and "installing modelsafe" not in proc.stdout
    assert len(calls) == 1
