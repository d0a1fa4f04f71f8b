"""Run a script of bench/ as ``python SCRIPT ARGS`` does, but in the test process.

The suite has torch, TensorFlow and JAX imported already (its test modules import them), so a
bench smoke test that runs its script here skips a fresh interpreter's framework import (TF
alone takes 10-20 s on a busy 2-core machine) and runs the same code: the file is executed as
``__main__`` with ``sys.argv`` set, and its exit status is checked.  Tests whose point is a
fresh process (resume, crash, examples) keep their subprocesses.
"""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import sys
from typing import Any


def run_script(path: Any, *args: Any) -> str:
    """Run ``path`` as ``__main__`` with ``args``; return what it printed on stdout (a failure raises)."""
    out = io.StringIO()
    argv = sys.argv
    sys.argv = [os.fspath(path), *map(os.fspath, args)]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(os.fspath(path), run_name="__main__")
    except SystemExit as exc:
        assert exc.code in (0, None), f"{path} exited with {exc.code}:\n{out.getvalue()[-3000:]}"
    finally:
        sys.argv = argv
    return out.getvalue()
