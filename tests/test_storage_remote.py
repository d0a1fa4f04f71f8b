"""What only object stores have: streamed multipart uploads, the AWS environment, lazy imports."""

from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import modelsafe as ms
from modelsafe.storage.remote import BLOCK_SIZE, filesystem

STATE_BYTES = 64 << 20


def _peak(call) -> int:
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_saves_stream_in_parts_and_never_hold_the_whole_file(s3_bucket):
    """The moto server runs in another process, so tracemalloc sees only the saving side."""
    base, options = s3_bucket
    state = {"w": np.ones(STATE_BYTES // 4, np.float32)}
    ms.save({"warm": np.ones(2)}, f"{base}/warm.safetensors", storage_options=options)  # clients made
    peak_file = _peak(lambda: ms.save(state, f"{base}/big.safetensors", storage_options=options))
    ck = ms.Checkpoints(f"{base}/run", storage_options=options)
    peak_checkpoint = _peak(lambda: ck.save(state, step=0))
    # a few parts in flight (botocore holds a copy of each); a whole-file buffer would be >= 64 MiB
    assert peak_file < STATE_BYTES * 0.6 and peak_checkpoint < STATE_BYTES * 0.6, (peak_file, peak_checkpoint)
    fs, _ = filesystem(base, options)
    for key in (f"{base}/big.safetensors", f"{base}/run/step0/state-00001-of-00001.safetensors"):
        etag = fs.info(key.split("://", 1)[1])["ETag"].strip('"')
        assert int(etag.rpartition("-")[2]) >= STATE_BYTES // BLOCK_SIZE // 2  # a multipart upload's ETag: md5-PARTS
    assert np.array_equal(ms.load(f"{base}/big.safetensors", storage_options=options)["w"], state["w"])
    assert np.array_equal(ck.load()["w"], state["w"])
    ck.close()


def test_a_failed_save_leaves_the_old_object(s3_bucket):
    base, options = s3_bucket
    url = f"{base}/m.safetensors"
    ms.save({"w": np.zeros(4)}, url, storage_options=options)

    big = np.ones(6 << 20, np.float32)  # more than one part goes up before the failure
    bad = {"a": big, "b": np.ones(3)}
    from modelsafe.storage import remote

    real = remote._Parts.write
    calls = []

    def failing(self, data):
        calls.append(len(memoryview(data)))
        if len(calls) > 1:
            raise RuntimeError("connection lost")
        return real(self, data)

    remote._Parts.write = failing
    try:
        with pytest.raises(RuntimeError, match="connection lost"):
            ms.save(bad, url, storage_options=options)
    finally:
        remote._Parts.write = real
    assert np.array_equal(ms.load(url, storage_options=options)["w"], np.zeros(4))


def test_the_aws_environment_configures_s3(s3_bucket, monkeypatch):
    base, options = s3_bucket
    monkeypatch.setenv("AWS_ENDPOINT_URL", options["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    ms.save({"w": np.arange(3)}, f"{base}/env.safetensors")  # no storage_options
    assert np.array_equal(ms.load(f"{base}/env.safetensors")["w"], np.arange(3))


def test_a_missing_s3fs_names_the_extra_to_install(monkeypatch):
    import fsspec  # noqa: F401 - loads fsspec.registry

    monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, "s3", raising=False)
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs now fails
    with pytest.raises(ms.StorageError, match=r"pip install 'modelsafe\[s3\]'") as info:
        ms.load("s3://bucket/x.safetensors")
    assert info.value.path == "s3://bucket/x.safetensors"


def test_import_modelsafe_imports_no_remote_storage_package():
    code = ("import sys, modelsafe; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fsspec', 's3fs', 'botocore', 'aiobotocore')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
