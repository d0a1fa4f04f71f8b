"""Each of the README's Python blocks runs on its own, as a reader would paste it: alone, in a
fresh interpreter, in an empty directory."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(python_blocks()) >= 3


@pytest.mark.parametrize("number", range(1, len(python_blocks()) + 1))
def test_each_readme_python_block_runs_alone_in_a_fresh_interpreter(number, tmp_path):
    pytest.importorskip("torch")
    block = python_blocks()[number - 1]
    proc = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"README.md python block {number} failed:\n{block}\n{proc.stderr}"
    assert any(tmp_path.iterdir()), "every block saves something"
