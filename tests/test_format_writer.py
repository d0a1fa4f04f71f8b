"""The streaming writer's fast paths give the same file as the plain ones."""

import numpy as np
import pytest

import modelsafe as ms
from modelsafe.format import writer
from modelsafe.storage.local import atomic_file
from modelsafe.tree import flatten


def _tree():
    rng = np.random.default_rng(0)
    return {
        "big": rng.standard_normal(300_000).astype(np.float32),      # hashed beside its write
        "small": [rng.integers(0, 9, n).astype(np.int16) for n in (0, 1, 5, 700)],
        "half": np.ones(3, np.float16),
        "flag": np.array(True),
        "raw": b"\x00\x01payload",
        # user data that looks like the manifest's checksum fields
        "xxh3": {"xxh3": "0000000000000000", "x": '\\"xxh3\\":\\"'},
        "epoch": 3,
    }


def _write(path, obj, *, plain_file=False, metadata=None):
    fl = flatten(obj)
    if plain_file:
        with open(path, "wb", buffering=1 << 16) as f:  # no write_many: payloads go through f.write
            writer.write_file(f, fl, user_metadata=metadata)
    else:
        with atomic_file(path) as f:
            writer.write_file(f, fl, user_metadata=metadata)
    return path.read_bytes()


def _same(a, b):
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    return a == b


def test_patched_header_equals_a_header_built_with_the_checksums(tmp_path):
    meta = {"note": "xxh3", "other": "0123456789abcdef"}
    written = _write(tmp_path / "fast", _tree(), metadata=meta)
    fl = flatten(_tree())
    layout = writer.plan_layout(fl.payloads)
    checksums = {leaf.name: writer.checksum.digest(writer._payload(leaf, end - begin)) for leaf, begin, end in layout}
    built = writer._header(layout, fl, None, meta, checksums)
    assert written[: len(built)] == built
    assert _same(ms.load(tmp_path / "fast"), _tree())


@pytest.mark.parametrize("threshold", [1, 1 << 40])
def test_large_and_small_payload_paths_give_the_same_file(tmp_path, monkeypatch, threshold):
    reference = _write(tmp_path / "ref", _tree())
    monkeypatch.setattr(writer, "LARGE_PAYLOAD_BYTES", threshold)
    assert _write(tmp_path / "other", _tree()) == reference


def test_small_payloads_batched_or_written_one_by_one_give_the_same_file(tmp_path, monkeypatch):
    monkeypatch.setattr(writer._SmallBatch, "LIMIT_COUNT", 3)
    batched = _write(tmp_path / "batched", _tree())
    assert _write(tmp_path / "plain", _tree(), plain_file=True) == batched
    assert _same(ms.load(tmp_path / "batched"), _tree())


def test_a_token_that_is_not_where_expected_is_not_patched():
    header = b'{"m":"{\\"xxh3\\":\\"aaaaaaaaaaaaaaaa\\"}","modelsafe.header_xxh3":"0000000000000000"}'
    with pytest.raises(ms.ModelsafeError, match="internal error"):
        writer._patch_checksums(header, ["bbbbbbbbbbbbbbbb"], ["1" * 16])
    misplaced = header.replace(b'\\"xxh3\\":\\"aaaa', b'\\"xxh4\\":\\"aaaa')
    with pytest.raises(ms.ModelsafeError, match="internal error"):
        writer._patch_checksums(misplaced, ["aaaaaaaaaaaaaaaa"], ["1" * 16])
    patched = writer._patch_checksums(header, ["aaaaaaaaaaaaaaaa"], ["1" * 16])
    assert b'\\"xxh3\\":\\"1111111111111111\\"' in patched and b"0000000000000000" not in patched


def test_placeholder_tokens_are_distinct_hex():
    tokens = writer._placeholder_tokens(5000)
    assert len(set(tokens)) == 5000 and all(len(t) == 16 and int(t, 16) >= 0 for t in tokens)


def test_a_tensor_that_changes_size_during_the_save_fails_cleanly(tmp_path, monkeypatch):
    from modelsafe.adapters.numpy.tensors import NumpyAdapter

    state = {"a": np.ones(10), "b": np.zeros(300_000)}
    ms.save(state, tmp_path / "f")
    before = (tmp_path / "f").read_bytes()
    real = NumpyAdapter.host_bytes
    monkeypatch.setattr(NumpyAdapter, "host_bytes", lambda self, obj: real(self, obj)[: max(0, obj.nbytes - 8)])
    with pytest.raises(ms.UnsupportedObjectError, match="changed size"):
        ms.save(state, tmp_path / "f")
    assert (tmp_path / "f").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["f"]  # no temporary file left


def test_the_header_is_built_once_per_save(tmp_path, monkeypatch):
    calls = []
    real = writer._header
    monkeypatch.setattr(writer, "_header", lambda *a: calls.append(1) or real(*a))
    ms.save(_tree(), tmp_path / "once", metadata={"k": "v"})
    assert len(calls) == 1  # the checksum tokens were all found and patched
    assert _same(ms.load(tmp_path / "once"), _tree())
