"""WritebackFile: bytes land exactly as written, whatever writev and sync_file_range do."""

import os

import numpy as np
import pytest

from modelsafe.storage import writeback
from modelsafe.storage.writeback import WritebackFile, writev_all


def _buffers(seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    sizes = [0, 1, 7, 4096, 3, 0, 70_000] + list(rng.integers(0, 3000, 1500))
    return [memoryview(rng.integers(0, 256, n, dtype=np.uint8)) for n in sizes]


def test_writev_all_resumes_after_short_writes(tmp_path, monkeypatch):
    real = os.writev
    calls = []

    def short_writev(fd, buffers):  # at most 1000 bytes per call, often ending inside a buffer
        calls.append(len(buffers))
        budget, parts = 1000, []
        for b in buffers:
            if budget <= 0:
                break
            parts.append(memoryview(b)[:budget])
            budget -= parts[-1].nbytes
        return real(fd, parts)

    monkeypatch.setattr(os, "writev", short_writev)
    buffers = _buffers()
    path = tmp_path / "x"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        assert writev_all(fd, buffers) == sum(b.nbytes for b in buffers)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(bytes(b) for b in buffers)
    assert max(calls) <= 1024 and len(calls) > 1


def test_mixed_writes_and_writeback_windows_keep_every_byte(tmp_path, monkeypatch):
    monkeypatch.setattr(writeback, "WINDOW", 64 << 10)  # many writeback windows in a small file
    monkeypatch.setattr(writeback, "LAG", 2)
    started = []
    real = writeback.sync_file_range()
    if real is not None:
        monkeypatch.setattr(writeback, "sync_file_range", lambda: lambda *a: started.append(a) or real(*a))
    buffers = _buffers(1)
    path = tmp_path / "y"
    with WritebackFile(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644), buffering=8192) as f:
        f.write(b"head")
        f.write_many(buffers[:800])
        f.write(b"middle" * 50_000)
        f.write_many(buffers[800:])
        f.flush()
        os.pwrite(f.fileno(), b"HEAD", 0)
    expected = b"HEAD" + b"".join(bytes(b) for b in buffers[:800]) + b"middle" * 50_000 + b"".join(bytes(b) for b in buffers[800:])
    assert path.read_bytes() == expected
    if real is not None:  # Linux: writeback was started on the way, in order, without overlaps
        writes = [(off, n) for fd, off, n, flags in started if flags == 2]
        assert writes and all(a[0] + a[1] == b[0] for a, b in zip(writes, writes[1:]))


def test_failing_sync_file_range_falls_back_to_a_plain_file(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(writeback, "WINDOW", 4096)
    monkeypatch.setattr(writeback, "sync_file_range", lambda: lambda *a: calls.append(a) or -1)
    path = tmp_path / "z"
    with WritebackFile(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)) as f:
        for i in range(20):
            f.write(bytes([i]) * 5000)
    assert path.read_bytes() == b"".join(bytes([i]) * 5000 for i in range(20))
    assert len(calls) == 1  # tried once, then never again


@pytest.mark.skipif(not hasattr(os, "writev"), reason="POSIX only")
def test_write_many_counts_toward_the_position(tmp_path):
    path = tmp_path / "w"
    with WritebackFile(os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)) as f:
        assert f.write_many([b"ab", memoryview(b"cd"), np.arange(3, dtype=np.uint8)]) == 7
        f.write(b"!")
        assert f.tell() == 8
    assert path.read_bytes() == b"abcd\x00\x01\x02!"


@pytest.mark.parametrize("code, fails", [(28, True), (95, False)])  # ENOSPC fails now; EOPNOTSUPP is ignored
def test_reserve_fails_early_only_when_the_space_is_missing(tmp_path, monkeypatch, code, fails):
    import modelsafe as ms

    path = tmp_path / "ck.safetensors"
    ms.save({"w": np.zeros(3)}, path)
    before = path.read_bytes()
    reserved = []
    monkeypatch.setattr(writeback, "fallocate", lambda: lambda fd, mode, off, size: reserved.append(size) or -1)
    monkeypatch.setattr(writeback, "_errno", lambda: code)
    state = {"w": np.ones(1000)}
    if fails:
        with pytest.raises(ms.StorageError, match="free disk space"):
            ms.save(state, path)
        assert path.read_bytes() == before
    else:
        ms.save(state, path)
        assert np.array_equal(ms.load(path)["w"], state["w"])
    assert len(reserved) == 1
    if not fails:
        assert reserved == [path.stat().st_size]  # the whole file, header included
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


@pytest.mark.skipif(writeback.fallocate() is None, reason="Linux only")
def test_reserved_file_ends_at_the_last_byte_written(tmp_path):
    import modelsafe as ms

    path = tmp_path / "r.safetensors"
    ms.save({"a": np.arange(100_000), "b": [np.ones(3, np.float16)] * 5}, path)
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
    tensors = ms.load(path)
    data = sum(x.nbytes for x in [tensors["a"], *tensors["b"][:1]])  # the list holds one tied array
    assert path.stat().st_size == 8 + n + data
