"""libc is loaded once, at import (modelsafe._libc): saving, loading and committing a
checkpoint load no library (an audit hook sees no ctypes.dlopen)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from modelsafe import _libc

SCRIPT = textwrap.dedent(
    """
    import os, sys, tempfile
    import numpy as np
    import modelsafe as ms
    from modelsafe.storage import commit, writeback   # what a checkpoint save uses
    from modelsafe.format import mapping

    d = tempfile.mkdtemp()
    ms.save({"w": np.ones(3)}, os.path.join(d, "warm.safetensors"))   # first use: every module imported
    ms.load(os.path.join(d, "warm.safetensors"))
    ck = ms.Checkpoints(os.path.join(d, "warm-run"), keep_last=1)
    ck.save({"w": np.ones(3)}, step=0); ck.save({"w": np.ones(3)}, step=1); ck.close()

    opened = []
    sys.addaudithook(lambda event, args: opened.append(args) if event == "ctypes.dlopen" else None)
    path = os.path.join(d, "x.safetensors")
    ms.save({"w": np.arange(1 << 16, dtype=np.float32)}, path)
    ms.load(path)
    ck = ms.Checkpoints(os.path.join(d, "run"), keep_last=1)
    for step in range(3):
        ck.save({"w": np.full(8, step)}, step=step)
    ck.load("latest")
    ck.close()
    a, b = os.path.join(d, "a"), os.path.join(d, "b")
    os.mkdir(a); os.mkdir(b)
    commit._exchange(a, b)   # how a commit replaces a checkpoint of the same name
    print("dlopen calls:", len(opened))
    """
)


def test_no_library_is_loaded_while_saving_loading_and_committing():
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("dlopen calls: 0"), proc.stdout


def test_every_caller_uses_the_one_loaded_libc():
    from modelsafe.format import mapping
    from modelsafe.storage import commit, writeback

    for module in (mapping, commit, writeback):
        assert module._libc is _libc
    if _libc.LIBC is not None and sys.platform.startswith("linux"):
        assert commit._RENAMEAT2 is not None and mapping._LIBC is not None
