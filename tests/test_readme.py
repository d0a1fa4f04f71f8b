"""The README's Python examples run as written (in one namespace, in a scratch directory)."""

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
# names the README's loops leave to the reader
PRELUDE = "epochs = 2\nval_loss = 0.5\n"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(python_blocks()) >= 3


def test_readme_python_examples_run(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "readme"}
    exec(compile(PRELUDE, "prelude", "exec"), namespace)
    for number, block in enumerate(python_blocks(), 1):
        exec(compile(block, f"README.md python block {number}", "exec"), namespace)
    assert namespace["ckpt"]["epoch"] == 5
    assert sorted(os.listdir(tmp_path / "runs" / "exp1"))
