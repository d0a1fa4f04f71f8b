"""Each of the README's Python blocks runs on its own, as a reader would paste it: alone, in a
fresh interpreter, in an empty directory.  The blocks run two at a time (tests/lanes.py)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from lanes import lanes, selected

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_examples():
    assert len(python_blocks()) >= 3


def _run(block: str, directory: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", block], cwd=directory, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(request, tmp_path_factory):
    """block number -> (future of its finished process, its directory), for the blocks selected to run."""
    pytest.importorskip("torch")
    blocks = python_blocks()
    directories = {n: tmp_path_factory.mktemp(f"block{n}") for n in selected(request, "number")}
    with lanes({n: (lambda n=n: _run(blocks[n - 1], directories[n])) for n in directories}) as futures:
        yield {n: (futures[n], directories[n]) for n in directories}


@pytest.mark.timeout(1200)  # a test may wait for the block run beside its own
@pytest.mark.parametrize("number", range(1, len(python_blocks()) + 1))
def test_each_readme_python_block_runs_alone_in_a_fresh_interpreter(runs, number):
    future, directory = runs[number]
    proc = future.result()
    assert proc.returncode == 0, f"README.md python block {number} failed:\n{python_blocks()[number - 1]}\n{proc.stderr}"
    assert any(directory.iterdir()), "every block saves something"
