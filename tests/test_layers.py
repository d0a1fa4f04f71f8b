"""The architecture is checked by machines: import-linter's contracts and ruff, both configured in pyproject.toml.

CI runs only the test command, so the checks run here; each fails with the tool's own report.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool(name: str) -> str:
    """The tool installed beside this Python (the dev extra), else the one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    found = here if os.path.exists(here) else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; pip install -e '.[dev]' installs it")
    return found


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    """Frameworks only in adapters, the core never names an adapter package, the CLI through the API, the layers."""
    result = _run([_tool("lint-imports"), "--no-cache"])
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_passes():
    result = _run([_tool("ruff"), "check", "--no-cache", "src", "tests", "bench", "scripts", "examples"])
    assert result.returncode == 0, result.stdout + result.stderr
