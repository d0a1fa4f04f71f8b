"""storage.local: atomic durable writes, cleanup of stale temp files, disk-full errors."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import modelsafe as ms
from modelsafe.storage import local
from modelsafe.storage.local import TMP_MARK, atomic_file, clean_stale_temps, storage_error, temp_path_for


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_atomic_file_replaces_the_target_only_on_success(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with atomic_file(target) as f:
        f.write(b"new")
        assert target.read_bytes() == b"old"  # not visible before the commit
        assert len([n for n in os.listdir(tmp_path) if TMP_MARK in n]) == 1
    assert target.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_atomic_file_failure_keeps_old_file_and_removes_temp(tmp_path):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_file(target) as f:
            f.write(b"partial")
            raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_atomic_file_os_errors_become_storage_errors(tmp_path):
    target = tmp_path / "f.bin"
    with pytest.raises(ms.StorageError) as info:
        with atomic_file(target):
            raise OSError(errno.ENOSPC, "No space left on device")
    err = info.value
    assert isinstance(err, OSError) and err.errno == errno.ENOSPC and err.path == str(target)
    assert str(target) in str(err) and "free disk space" in str(err) and "untouched" in str(err)
    assert os.listdir(tmp_path) == []


def test_atomic_file_fsyncs_file_and_directory(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(local.os, "fsync", lambda fd: (synced.append(os.path.realpath(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    with atomic_file(tmp_path / "f.bin") as f:
        f.write(b"x")
    assert len(synced) == 2
    assert TMP_MARK in os.path.basename(synced[0])  # the temp file, before the rename
    assert synced[1] == os.path.realpath(tmp_path)  # then the directory, after it


def test_temp_path_is_hidden_beside_the_target(tmp_path):
    tmp = temp_path_for(str(tmp_path / "model.safetensors"))
    assert os.path.dirname(tmp) == str(tmp_path)
    name = os.path.basename(tmp)
    assert name.startswith(f".model.safetensors{TMP_MARK}{os.getpid()}-")
    assert temp_path_for(str(tmp_path / "model.safetensors")) != tmp


def test_clean_stale_temps_removes_only_dead_writers_temps_of_that_target(tmp_path):
    target = tmp_path / "m.safetensors"
    dead = tmp_path / f".m.safetensors{TMP_MARK}{dead_pid()}-00000000"
    live = tmp_path / f".m.safetensors{TMP_MARK}{os.getpid()}-11111111"
    other_target = tmp_path / f".other.safetensors{TMP_MARK}{dead_pid()}-22222222"
    odd = tmp_path / f".m.safetensors{TMP_MARK}notapid-33333333"
    for p in (dead, live, other_target, odd):
        p.write_bytes(b"x")
    removed = clean_stale_temps(str(target))
    assert removed == [dead.name]
    assert not dead.exists() and live.exists() and other_target.exists() and odd.exists()


def test_storage_error_hints():
    for code, hint in [(errno.EFBIG, "size limit"), (errno.EACCES, "permissions"), (errno.ENOENT, "does not exist"),
                       (errno.EIO, "check the path")]:
        err = storage_error("p.safetensors", "writing", OSError(code, os.strerror(code)))
        assert isinstance(err, ms.StorageError) and err.errno == code and hint in str(err)
        assert str(err).startswith("p.safetensors: writing failed")


_FULL_DISK_CHILD = textwrap.dedent(
    r"""
    import json, resource, sys
    import numpy as np
    import modelsafe as ms

    path, limit = sys.argv[1], int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))  # Python ignores SIGXFSZ: writes get EFBIG
    try:
        ms.save({"w": np.ones(4 << 20, np.uint8), "n": 2}, path)
        print(json.dumps({"ok": True}))
    except BaseException as exc:
        print(json.dumps({"mro": [c.__name__ for c in type(exc).__mro__], "msg": str(exc),
                          "path": getattr(exc, "path", None), "errno": getattr(exc, "errno", None)}))
    """
)


@pytest.mark.parametrize("limit", [0, 100, 1 << 20, (4 << 20) - 1])
def test_full_disk_is_a_storage_error_and_keeps_the_old_file(tmp_path, limit):
    path = tmp_path / "ck.safetensors"
    ms.save({"w": np.zeros(3), "n": 1}, path)
    before = path.read_bytes()
    proc = subprocess.run([sys.executable, "-c", _FULL_DISK_CHILD, str(path), str(limit)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not result.get("ok"), "a save past the file size limit reported success"
    assert "StorageError" in result["mro"] and "OSError" in result["mro"], result
    assert result["path"] == str(path) and str(path) in result["msg"]
    assert result["errno"] == errno.EFBIG and "size limit" in result["msg"]
    assert path.read_bytes() == before and ms.load(path)["n"] == 1
    assert os.listdir(tmp_path) == [path.name], "the failed save left a temp file behind"
