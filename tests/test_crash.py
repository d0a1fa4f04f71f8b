"""A process killed with SIGKILL in the middle of ms.save leaves the old file loadable,
and the next save cleans up what the killed one left behind.

Two ways to pick the moment: hooks inside the child's save (after the k-th tensor is
hashed, before the header rewrite, before fsync, before/after the rename) for exact
points, and, for arbitrary ones, a save of a few hundred MB that pauses at a random
tensor and tells the parent so: the parent kills it there, or lets it go on and kills it
a random moment later (inside or after the save; either way the file is old or new).
No assertion depends on how fast the machine is.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

import modelsafe as ms
from modelsafe.storage.local import TMP_MARK

pytestmark = pytest.mark.timeout(600)

_CHILD = textwrap.dedent(
    r"""
    import json, os, signal, sys, time
    import numpy as np
    import modelsafe as ms
    from modelsafe.format import checksum

    job = json.loads(sys.argv[1])
    count, elems = job["tensors"], job["elements"]
    state = {"version": 2, "tensors": {f"t{i}": np.full(elems, i + 0.5, np.float32) for i in range(count)}}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    hook = job.get("hook")
    if hook:
        where, n = hook
        calls = {"n": 0}

        def wrap(module, name, point):
            original = getattr(module, name)

            def wrapper(*args, **kwargs):
                if where == point and point != "replace_after":
                    if calls["n"] == n:
                        die()
                    calls["n"] += 1
                result = original(*args, **kwargs)
                if where == point == "replace_after":
                    die()
                return result

            setattr(module, name, wrapper)

        wrap(checksum, "digest", "leaf")
        wrap(os, "pwrite", "pwrite")
        wrap(os, "fsync", "fsync")
        wrap(os, "replace", "replace_before")
        wrap(os, "replace", "replace_after")
    pause = job.get("pause_at_leaf")
    if pause is not None:
        original_digest, seen = checksum.digest, {"n": 0}

        def pausing_digest(*args, **kwargs):
            if seen["n"] == pause:
                print("inside", flush=True)      # the temp file exists; the rename is still ahead
                sys.stdin.readline()             # wait for the parent: killed here, or told to go on
            seen["n"] += 1
            return original_digest(*args, **kwargs)

        checksum.digest = pausing_digest
    print("ready", flush=True)
    t0 = time.perf_counter()
    ms.save(state, job["path"])
    print(json.dumps({"seconds": time.perf_counter() - t0}), flush=True)
    """
)

OLD = {"version": 1, "tensors": {"t0": np.arange(10, dtype=np.float32)}}


def child(job: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(job)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_after_kill(path, job: dict) -> str:
    """The file loads, fully old or fully new; returns which."""
    back = ms.load(path)
    if back["version"] == 1:
        assert list(back["tensors"]) == ["t0"] and back["tensors"]["t0"].tolist() == list(range(10))
        return "old"
    assert back["version"] == 2 and len(back["tensors"]) == job["tensors"]
    for i, t in enumerate(back["tensors"].values()):
        assert t.shape == (job["elements"],) and t[0] == i + 0.5 and t[-1] == i + 0.5
    return "new"


def temps(directory) -> list[str]:
    return [n for n in os.listdir(directory) if TMP_MARK in n]


def assert_next_save_cleans_up(path) -> None:
    ms.save(OLD, path)
    assert temps(path.parent) == [], "the next save left the killed process's temp file behind"
    assert sorted(os.listdir(path.parent)) == [path.name]


def hook_points(count: int, tensors: int, rng: random.Random) -> list:
    fixed = [["leaf", 0], ["leaf", tensors // 2], ["leaf", tensors - 1], ["pwrite", 0], ["fsync", 0],
             ["replace_before", 0], ["replace_after", 0], ["fsync", 1]]
    points = fixed[:count]
    while len(points) < count:
        points.append(["leaf", rng.randrange(tensors)])
    return points


def test_kill_at_exact_points_inside_save(tmp_path, soak):
    path = tmp_path / "state.safetensors"
    ms.save(OLD, path)
    rng = random.Random(7)
    tensors = 64
    outcomes = []
    for hook in hook_points(200 if soak else 20, tensors, rng):
        job = {"path": str(path), "tensors": tensors, "elements": 4096, "hook": hook}
        proc = child(job)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL, f"hook {hook}: child was not killed: {err[-2000:]}"
        outcome = check_after_kill(path, job)
        expected = "new" if hook[0] in ("replace_after",) or hook == ["fsync", 1] else "old"
        assert outcome == expected, f"killed at {hook}: found the {outcome} file"
        if hook[0] not in ("replace_after",) and hook != ["fsync", 1]:
            assert len(temps(tmp_path)) == 1, f"killed at {hook}: expected the killed save's temp file"
        outcomes.append(outcome)
        assert_next_save_cleans_up(path)
    assert outcomes.count("old") >= len(outcomes) - 2


def test_kill_at_random_moments_of_a_large_save(tmp_path, soak):
    path = tmp_path / "big.safetensors"
    ms.save(OLD, path)
    job = {"path": str(path), "tensors": 48, "elements": 1 << 20}  # 192 MiB
    calibrate = child(job)
    out, err = calibrate.communicate(timeout=300)
    assert calibrate.returncode == 0, err[-2000:]
    duration = json.loads(out.splitlines()[-1])["seconds"]  # only spreads the delayed kills; asserts nothing
    assert check_after_kill(path, job) == "new"
    ms.save(OLD, path)
    rng = random.Random(11)
    for attempt in range(200 if soak else 20):
        leaf = rng.randrange(job["tensors"])
        proc = child(dict(job, pause_at_leaf=leaf))
        assert proc.stdout.readline().strip() == "ready"
        assert proc.stdout.readline().strip() == "inside", proc.stderr.read()[-2000:]
        at_pause = attempt % 2 == 0
        if not at_pause:  # go on, and die a random moment later: inside a write, an fsync, or after the save
            proc.stdin.write("go\n")
            proc.stdin.flush()
            time.sleep(rng.random() * duration * (1 - leaf / job["tensors"]))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL or not at_pause
        outcome = check_after_kill(path, job)
        if at_pause:
            assert outcome == "old", f"killed while paused at tensor {leaf}: found the new file"
            assert len(temps(tmp_path)) == 1, f"killed while paused at tensor {leaf}: expected the save's temp file"
        assert_next_save_cleans_up(path)


def test_killed_temp_of_a_live_process_is_kept(tmp_path):
    """Only temps whose writer is gone are removed: a concurrent live writer's file is left alone."""
    path = tmp_path / "x.safetensors"
    live = tmp_path / f".x.safetensors{TMP_MARK}{os.getpid()}-abcd1234"
    live.write_bytes(b"in progress")
    ms.save({"a": 1}, path)
    assert live.exists()
