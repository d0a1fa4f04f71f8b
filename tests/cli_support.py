"""Helpers for the command-line tests: run ``modelsafe`` in-process and as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
from click.testing import CliRunner

import modelsafe as ms
from modelsafe.cli import cli


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def invoke(*args: Any) -> Result:
    """Run the command group in this process (click's CliRunner, stdout and stderr apart)."""
    result = CliRunner().invoke(cli, [os.fspath(a) for a in args], catch_exceptions=False)
    return Result(result.exit_code, result.stdout, result.stderr)


def run_process(*args: Any, cwd: Any = None, timeout: float = 120) -> Result:
    """Run ``python -m modelsafe ARGS`` in a fresh interpreter."""
    env = dict(os.environ, COLUMNS="200")
    proc = subprocess.run(
        [sys.executable, "-m", "modelsafe", *[os.fspath(a) for a in args]],
        capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


def make_run(directory: Any, losses: list[float], *, monitor: str | None = "val_loss", name: str = "step{step:03d}",
             bind_files: bool = False) -> Any:
    """A run with one checkpoint per loss (step = index), tensors that depend on the step."""
    ck = ms.Checkpoints(directory, monitor=monitor, name=name)
    if bind_files:
        def save(path: str) -> None:
            with open(os.path.join(path, "notes.txt"), "w") as f:
                f.write("bound file\n")
        ck.bind(save=save)
    for step, loss in enumerate(losses):
        state = {"model": {"w": np.full((4, 4), step, np.float32), "b": np.arange(4, dtype=np.int64)}, "epoch": step}
        ck.save(state, step=step, metrics={"val_loss": loss, "acc": 1.0 - loss})
    ck.close()
    return ck


def flip_byte(path: Any, offset: int) -> None:
    """Flip one bit of the byte at ``offset`` (negative: from the end)."""
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        position = offset if offset >= 0 else size + offset
        f.seek(position)
        byte = f.read(1)[0]
        f.seek(position)
        f.write(bytes([byte ^ 0x01]))


def tensor_span(path: Any, name: str) -> tuple[int, int]:
    """Absolute file offsets [begin, end) of tensor ``name`` in a safetensors file."""
    import struct

    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    begin, end = header[name]["data_offsets"]
    return 8 + n + begin, 8 + n + end
