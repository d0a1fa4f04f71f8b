"""Hostile and broken files: every one is a CorruptCheckpointError naming the file
(and the tensor where one applies) -- never a crash, a hang or a huge allocation.

Loads run in a child process whose address space is capped a little above what it
already uses (RLIMIT_AS), so an attempt to allocate what a hostile header declares
shows up as a MemoryError (a test failure), not as a machine swapping to death.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.torch import load_file as st_load_file

import modelsafe as ms
from modelsafe.format.manifest import FORMAT_VERSION

from craft import raw_file, read_parts, sealed_file

pytestmark = pytest.mark.timeout(300)

HEADROOM = 512 << 20  # bytes the child may allocate beyond what it holds after its imports

_CHILD = textwrap.dedent(
    r"""
    import json, os, resource, sys
    import numpy as np
    import modelsafe as ms

    def vm_bytes():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmSize")

    job = json.load(sys.stdin)
    if job["torch"]:
        import torch  # imported before the cap: its address space is not what we measure
    limit = vm_bytes() + job["headroom"]
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    base = open(job["base"], "rb").read() if job.get("base") else None
    scratch = job.get("scratch")

    def outcome(path, mode):
        try:
            if mode == "load":
                ms.load(path)
            elif mode == "load_noverify":
                ms.load(path, verify=False)
            elif mode == "allocate":  # self-test of the cap
                np.ones(case["bytes"], np.uint8)
            else:
                with ms.open(path) as reader:
                    for key in reader.keys():
                        reader[key]
                    reader.metadata
            return {"ok": True}
        except BaseException as exc:  # report everything, MemoryError included
            return {
                "type": type(exc).__name__,
                "mro": [c.__name__ for c in type(exc).__mro__],
                "msg": str(exc),
                "path": getattr(exc, "path", None),
                "key": getattr(exc, "key", None),
            }

    results = []
    for case in job["cases"]:
        if "path" in case:
            path = case["path"]
        else:
            data = bytearray(base)
            if "flip" in case:
                offset, bit = case["flip"]
                data[offset] ^= 1 << bit
            else:
                del data[case["truncate"]:]
            with open(scratch, "wb") as f:
                f.write(data)
            path = scratch
        results.append(outcome(path, case.get("mode", "load")))
    json.dump(results, sys.stdout)
    """
)


def run_capped(cases: list[dict], *, base=None, scratch=None, torch: bool = False, timeout: float = 240) -> list[dict]:
    """Run each case's load in one address-space-capped child; returns one outcome per case."""
    job = {"cases": cases, "base": base and str(base), "scratch": scratch and str(scratch), "torch": torch,
           "headroom": HEADROOM}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD], input=json.dumps(job), capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"child crashed (rc {proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def assert_corrupt(result: dict, path, key=None, what: str = "") -> None:
    assert not result.get("ok"), f"{what}: a broken file loaded without error"
    assert "CorruptCheckpointError" in result["mro"], f"{what}: got {result['type']}: {result['msg']}"
    assert "ValueError" in result["mro"]
    assert result["path"] == str(path), f"{what}: error path {result['path']!r}"
    assert str(path) in result["msg"], f"{what}: message does not name the file: {result['msg']}"
    if key is not None:
        assert result["key"] == key, f"{what}: error key {result['key']!r}, expected {key!r}: {result['msg']}"
        assert repr(key) in result["msg"] or key in result["msg"]


def test_the_address_space_cap_is_real():
    """A hostile load that allocated what its header declares would fail here, not swap the machine."""
    ok, capped = run_capped([{"path": "", "mode": "allocate", "bytes": 64 << 20},
                             {"path": "", "mode": "allocate", "bytes": 2 * HEADROOM}])
    assert ok == {"ok": True}
    assert capped["type"] == "MemoryError"


@pytest.fixture(scope="module")
def small_file(tmp_path_factory):
    """A small modelsafe file with several payload kinds (about 1 KiB)."""
    path = tmp_path_factory.mktemp("hostile") / "small.safetensors"
    obj = {
        "w": np.arange(12, dtype=np.float32).reshape(3, 4),
        "b": np.array([1, -2, 3], dtype=np.int16),
        "blob": b"\x00\x01payload",
        "steps": (1, 2.5, "x"),
        "m": np.array([True, False]),
    }
    ms.save(obj, path, metadata={"run": "hostile"})
    assert 400 < path.stat().st_size < 2048
    return path


def test_truncated_at_every_offset(small_file, tmp_path):
    size = small_file.stat().st_size
    scratch = tmp_path / "truncated.safetensors"
    results = run_capped([{"truncate": n} for n in range(size)], base=small_file, scratch=scratch)
    for n, result in enumerate(results):
        assert_corrupt(result, scratch, what=f"truncated to {n} of {size} bytes")


def test_truncated_at_every_offset_open_and_read(small_file, tmp_path):
    size = small_file.stat().st_size
    scratch = tmp_path / "truncated.safetensors"
    results = run_capped([{"truncate": n, "mode": "open"} for n in range(0, size, 3)], base=small_file, scratch=scratch)
    for result in results:
        assert_corrupt(result, scratch, what="ms.open of a truncated file")


def test_appended_garbage_is_refused(small_file, tmp_path):
    bad = tmp_path / "longer.safetensors"
    bad.write_bytes(small_file.read_bytes() + b"\0" * 8)
    assert_corrupt(run_capped([{"path": str(bad)}])[0], bad, what="file with trailing bytes")


def test_single_bit_flips_are_all_detected(small_file, tmp_path, soak):
    size = small_file.stat().st_size
    rng = random.Random(20261129)
    if soak:  # every bit of the file
        flips = [(offset, bit) for offset in range(size) for bit in range(8)]
    else:
        flips = [(rng.randrange(size), rng.randrange(8)) for _ in range(1000)]
    count = len(flips)
    scratch = tmp_path / "flipped.safetensors"
    results = run_capped([{"flip": list(f)} for f in flips], base=small_file, scratch=scratch)
    undetected = [flip for flip, result in zip(flips, results) if result.get("ok")]
    assert not undetected, f"{len(undetected)} of {count} single-bit flips loaded silently, e.g. {undetected[:5]}"
    for flip, result in zip(flips, results):
        assert_corrupt(result, scratch, what=f"bit {flip[1]} of byte {flip[0]} flipped")


def test_header_damage_is_caught_even_without_verify(small_file, tmp_path):
    """verify=False skips tensor checksums only: the header seal and every structural check still apply."""
    header_end = small_file.stat().st_size - len(read_parts(small_file)[1])
    rng = random.Random(5)
    scratch = tmp_path / "flipped.safetensors"
    cases = [{"flip": [rng.randrange(header_end), rng.randrange(8)], "mode": "load_noverify"} for _ in range(300)]
    cases += [{"truncate": n, "mode": "load_noverify"} for n in range(0, small_file.stat().st_size, 7)]
    for case, result in zip(cases, run_capped(cases, base=small_file, scratch=scratch)):
        assert_corrupt(result, scratch, what=f"{case} with verify=False")


def test_every_bit_flip_in_tensor_bytes_names_the_tensor(small_file, tmp_path):
    header, data = read_parts(small_file)
    data_start = small_file.stat().st_size - len(data)
    name, spec = "w", header["w"]
    begin, end = spec["data_offsets"]
    scratch = tmp_path / "flipped.safetensors"
    cases = [{"flip": [data_start + i, bit]} for i in range(begin, end) for bit in (0, 7)]
    cases += [dict(c, mode="open") for c in cases[:8]]
    for result in run_capped(cases, base=small_file, scratch=scratch):
        assert_corrupt(result, scratch, key=name, what="flipped data byte")
        assert "checksum" in result["msg"]


def _write(path, blob: bytes):
    path.write_bytes(blob)
    return path


def test_header_length_larger_than_file(tmp_path):
    cases = {
        "huge": b"\xff" * 8 + b"{}",
        "past_end": (1000).to_bytes(8, "little") + b'{"a":1}',
        "just_past_end": (10).to_bytes(8, "little") + b"{" + b" " * 8,
        "empty": b"",
        "short_prefix": b"\x02\x00\x00",
        "zero_length": (0).to_bytes(8, "little"),
    }
    paths = {k: _write(tmp_path / f"{k}.safetensors", v) for k, v in cases.items()}
    results = run_capped([{"path": str(p)} for p in paths.values()])
    for (what, path), result in zip(paths.items(), results):
        assert_corrupt(result, path, what=what)


def _entry(dtype="F32", shape=(2,), offsets=(0, 8)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


# name -> (header, data, tensor the error must name or None)
HOSTILE_HEADERS = {
    "overlap": ({"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(4, 12))}, bytes(12), "b"),
    "same_bytes_twice": ({"a": _entry(offsets=(0, 8)), "b": _entry(offsets=(0, 8))}, bytes(8), None),
    "negative_begin": ({"a": _entry(offsets=(-8, 0))}, bytes(8), "a"),
    "negative_end": ({"a": _entry(shape=(0,), offsets=(8, -8))}, bytes(8), "a"),
    "end_past_data": ({"a": _entry(offsets=(0, 8))}, bytes(4), "a"),
    "way_out_of_bounds": ({"a": _entry(shape=(2,), offsets=(2**62, 2**62 + 8))}, bytes(8), "a"),
    "begin_after_end": ({"a": _entry(shape=(0,), offsets=(8, 0))}, bytes(8), "a"),
    "gap": ({"a": _entry(offsets=(8, 16))}, bytes(16), "a"),
    "uncovered_tail": ({"a": _entry(offsets=(0, 8))}, bytes(16), None),
    "trillion_elements": ({"a": _entry(shape=(10**6, 10**6), offsets=(0, 1024))}, bytes(1024), "a"),
    "trillion_elements_spanning": ({"a": _entry(shape=(10**6, 10**6), offsets=(0, 4 * 10**12))}, bytes(1024), "a"),
    "dtype_shape_mismatch": ({"a": _entry(dtype="F64", shape=(2,), offsets=(0, 8))}, bytes(8), "a"),
    "dtype_shape_short": ({"a": _entry(dtype="I32", shape=(3,), offsets=(0, 8))}, bytes(8), "a"),
    "negative_dim": ({"a": _entry(shape=(-2, -1), offsets=(0, 8))}, bytes(8), "a"),
    "float_dim": ({"a": _entry(shape=(2.0,), offsets=(0, 8))}, bytes(8), "a"),
    "bool_dim": ({"a": {"dtype": "F32", "shape": [True, 2], "data_offsets": [0, 8]}}, bytes(8), "a"),
    "too_many_dims": ({"a": _entry(shape=(1,) * 100000, offsets=(0, 4))}, bytes(4), "a"),
    "unknown_dtype": ({"a": _entry(dtype="F128")}, bytes(8), "a"),
    "dtype_not_string": ({"a": _entry(dtype=["F32"])}, bytes(8), "a"),
    "offsets_not_ints": ({"a": _entry(offsets=("0", "8"))}, bytes(8), "a"),
    "offsets_three": ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8, 16]}}, bytes(8), "a"),
    "offsets_huge_ints": ({"a": _entry(offsets=(0, 10**40))}, bytes(8), "a"),
    "entry_not_object": ({"a": [1, 2]}, b"", "a"),
    "metadata_not_strings": ({"__metadata__": {"x": 1}}, b"", None),
    "metadata_not_object": ({"__metadata__": "hello"}, b"", None),
    "header_is_list": ([1, 2, 3], b"", None),
    "header_is_number": (123, b"", None),
}


def test_hostile_headers(tmp_path):
    paths = {}
    for name, (header, data, _) in HOSTILE_HEADERS.items():
        paths[name] = _write(tmp_path / f"{name}.safetensors", raw_file(header, data))
    cases = [{"path": str(p), "mode": mode} for p in paths.values() for mode in ("load", "open")]
    results = iter(run_capped(cases, torch=True))
    for name, path in paths.items():
        key = HOSTILE_HEADERS[name][2]
        for mode in ("load", "open"):
            assert_corrupt(next(results), path, key=key, what=f"{name} ({mode})")


BAD_TEXT_HEADERS = {
    "not_json": b"this is not json at all",
    "truncated_json": b'{"a": {"dtype": "F32", ',
    "not_utf8": b'{"a\xff\xfe": 1}',
    "lone_surrogate_bytes": b'{"\xed\xa0\x80": 1}',
    "nan_literal": b'{"a": NaN}',
    "deep_nesting": b"[" * 200000 + b"]" * 200000,
    "nul_bytes": b"\0" * 64,
    "duplicate_then_bad": b'{"a": 1, "a": {"dtype": "F32"}}',
    "integer_of_5000_digits": b'{"a": {"dtype": "F32", "shape": [1' + b"0" * 5000 + b'], "data_offsets": [0, 4]}}',
}


def test_non_json_and_non_utf8_headers(tmp_path):
    paths = {k: _write(tmp_path / f"{k}.safetensors", raw_file(v)) for k, v in BAD_TEXT_HEADERS.items()}
    results = run_capped([{"path": str(p)} for p in paths.values()])
    for (name, path), result in zip(paths.items(), results):
        assert_corrupt(result, path, what=name)


def _manifest_file(tmp_path, name, manifest, header_entries=None, data=b"") -> object:
    header = dict(header_entries or {})
    header["__metadata__"] = {"modelsafe": manifest}
    return _write(tmp_path / f"{name}.safetensors", sealed_file(header, data))


def _good_manifest(**changes):
    manifest = {
        "format_version": list(FORMAT_VERSION),
        "writer": "modelsafe test",
        "framework": "numpy",
        "tree": {"dict": [["a", {"tensor": "a"}]]},
        "tensors": {"a": {"xxh3": "0" * 16}},
    }
    manifest.update(changes)
    return manifest


def test_newer_major_format_version_is_refused_with_upgrade_hint(tmp_path):
    manifest = _good_manifest(format_version=[FORMAT_VERSION[0] + 1, 3], writer="modelsafe 9.4.1")
    manifest["tree"] = {"brand_new_node": 1}
    path = _manifest_file(tmp_path, "newer", manifest, {"a": _entry()}, bytes(8))
    for mode in ("load", "open"):
        with pytest.raises(ms.NewerFormatError) as info:
            if mode == "load":
                ms.load(path)
            else:
                ms.open(path)
        err = info.value
        assert isinstance(err, ms.CorruptCheckpointError)
        assert err.path == str(path) and str(path) in str(err)
        assert "modelsafe 9.4.1" in str(err)
        assert f"{FORMAT_VERSION[0] + 1}.3" in str(err)
        assert "pip install -U modelsafe" in str(err) and "Upgrade" in str(err)


def test_newer_minor_format_version_still_loads(tmp_path):
    # a minor bump only adds optional fields: it must keep loading
    src = tmp_path / "src.safetensors"
    ms.save({"a": np.arange(3.0)}, src)
    header, data = read_parts(src)
    manifest = json.loads(header["__metadata__"]["modelsafe"])
    manifest["format_version"] = [FORMAT_VERSION[0], FORMAT_VERSION[1] + 5]
    manifest["some_future_field"] = {"ignored": True}
    header["__metadata__"]["modelsafe"] = manifest
    path = _write(tmp_path / "minor.safetensors", sealed_file(header, data))
    assert ms.load(path)["a"].tolist() == [0.0, 1.0, 2.0]


HOSTILE_MANIFESTS = {
    "not_object": ([1, 2], None),
    "no_version": ({k: v for k, v in _good_manifest().items() if k != "format_version"}, None),
    "version_string": (_good_manifest(format_version="1.0"), None),
    "version_zero": (_good_manifest(format_version=[0, 9]), None),
    "tensors_missing": ({k: v for k, v in _good_manifest().items() if k != "tensors"}, None),
    "tensor_not_in_header": (_good_manifest(tensors={"a": {"xxh3": "0" * 16}, "ghost": {"xxh3": "0" * 16}}), None),
    "bad_checksum_text": (_good_manifest(tensors={"a": {"xxh3": "zz"}}), "a"),
    "unknown_kind": (_good_manifest(tensors={"a": {"xxh3": "0" * 16, "kind": "exec"}}), "a"),
    "unknown_logical_dtype": (_good_manifest(tensors={"a": {"xxh3": "0" * 16, "dtype": "float99", "shape": [2]}}), "a"),
    "logical_trillion_elements": (
        _good_manifest(tensors={"a": {"xxh3": "0" * 16, "dtype": "float32", "shape": [10**6, 10**6]}}), "a"),
    "logical_shape_negative": (_good_manifest(tensors={"a": {"xxh3": "0" * 16, "dtype": "float32", "shape": [-2]}}), "a"),
    "attrs_not_object": (_good_manifest(tensors={"a": {"xxh3": "0" * 16, "attrs": [1]}}), "a"),
    "framework_not_string": (_good_manifest(framework=7), "a"),
    "alias_to_nothing": (_good_manifest(aliases={"b": "nowhere"}), None),
    "tree_refers_to_missing_tensor": (_good_manifest(tree={"tensor": "nowhere"}), None),
    "tree_unknown_node": (_good_manifest(tree={"who_knows": 1}), None),
    "tree_bad_dict": (_good_manifest(tree={"dict": "abc"}), None),
    "tree_bad_int": (_good_manifest(tree={"int": "12x"}), None),
    "tree_bad_float": (_good_manifest(tree={"float": "nanx"}), None),
    "tree_unhashable_key": (_good_manifest(tree={"dict": [[[1, 2], 3]]}), None),
    "tree_bad_tuple": (_good_manifest(tree={"tuple": 5}), None),
    "tree_bad_namedtuple": (_good_manifest(tree={"namedtuple": "x:Y", "fields": ["a"], "items": []}), None),
    "tree_bad_dataclass": (_good_manifest(tree={"dataclass": "x:Y", "fields": [[1, 2]]}), None),
    "logical_dtype_disagrees_with_storage": (
        _good_manifest(tensors={"a": {"xxh3": "0" * 16, "dtype": "float64", "shape": [1]}}), "a"),
    "logical_shape_disagrees_with_bytes": (
        _good_manifest(tensors={"a": {"xxh3": "0" * 16, "dtype": "float32", "shape": [3]}}), "a"),
}


def test_hostile_manifests_in_properly_sealed_files(tmp_path):
    """An attacker can re-seal the header; the manifest itself must still be validated."""
    paths = {}
    for name, (manifest, _) in HOSTILE_MANIFESTS.items():
        data = np.array([1.0, 2.0], np.float32).tobytes()
        paths[name] = _manifest_file(tmp_path, name, manifest, {"a": _entry()}, data)
    results = run_capped([{"path": str(p)} for p in paths.values()])
    for (name, path), result in zip(paths.items(), results):
        assert_corrupt(result, path, key=HOSTILE_MANIFESTS[name][1], what=name)


def _nested(depth: int, leaf=1):
    node = leaf
    for _ in range(depth):
        node = [node]
    return node


@pytest.mark.parametrize("depth", [400, 900])
def test_deeply_nested_manifest_tree_and_metadata(tmp_path, depth):
    """JSON that parses but is nested deeper than the decoder can recurse: an error, not a RecursionError."""
    data = np.array([1.0, 2.0], np.float32).tobytes()
    tree_path = _manifest_file(tmp_path, "deep_tree", _good_manifest(tree=[{"tensor": "a"}, _nested(depth)]),
                               {"a": _entry()}, data)
    meta_path = _manifest_file(tmp_path, "deep_meta", _good_manifest(metadata=_nested(depth)), {"a": _entry()}, data)
    results = run_capped([{"path": str(tree_path)}, {"path": str(meta_path), "mode": "open"}])
    assert_corrupt(results[0], tree_path, what="deep tree")
    assert_corrupt(results[1], meta_path, what="deep metadata")


def test_framework_names_in_a_file_never_import_modules(tmp_path):
    src = tmp_path / "src.safetensors"
    ms.save({"a": np.arange(3.0)}, src)
    header, data = read_parts(src)
    original = header["__metadata__"]["modelsafe"]
    for name in ("os", "subprocess", "modelsafe.adapters.numpy:ADAPTER", "../../etc"):
        manifest = json.loads(original)
        manifest["framework"] = name
        header["__metadata__"]["modelsafe"] = manifest
        path = _write(tmp_path / "fw.safetensors", sealed_file(header, data))
        before = set(sys.modules)
        with pytest.raises(ms.ModelsafeError, match="unknown framework"):
            ms.load(path)
        assert set(sys.modules) - before == set()


@pytest.mark.parametrize("text", ["{not json", '{"format_version": [1' + "0" * 5000 + ', 0]}', "[" * 100000],
                         ids=["garbage", "huge_integer", "deep"])
def test_manifest_json_garbage_in_sealed_file(tmp_path, text):
    header = {"a": _entry(), "__metadata__": {"modelsafe": text}}
    path = _write(tmp_path / "garbage.safetensors", sealed_file(header, bytes(8)))
    assert_corrupt(run_capped([{"path": str(path)}])[0], path)


def test_missing_or_doubled_header_seal(tmp_path, small_file):
    header, data = read_parts(small_file)
    del header["__metadata__"]["modelsafe.header_xxh3"]
    unsealed = _write(tmp_path / "unsealed.safetensors", raw_file(header, data))
    header["__metadata__"]["x"] = '"modelsafe.header_xxh3":"0000000000000000"'
    results = run_capped([{"path": str(unsealed)}])
    assert_corrupt(results[0], unsealed, what="manifest without its header seal")


def test_fifo_and_devices_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    results = run_capped([{"path": str(fifo)}, {"path": str(fifo), "mode": "open"}, {"path": "/dev/zero"}], timeout=60)
    assert_corrupt(results[0], fifo, what="a FIFO")
    assert_corrupt(results[1], fifo, what="a FIFO (open)")
    assert_corrupt(results[2], "/dev/zero", what="a character device")


# -- fuzzing the manifest tree: any JSON a sealed file may hold ------------------------------

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from modelsafe.tree import _DECODERS  # noqa: E402

_FIELD_WORDS = ["type", "fields", "items", "_metadata", "class", "args", "kwargs", "state", "id", "name", "a", "x"]
_json_leaf = (st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False)
              | st.sampled_from(["a", "x", "nan", "inf", "os:system", "builtins:eval", "test_hostile:Trap", ""]))


def _nodes():
    tags = sorted(_DECODERS)
    keys = st.sampled_from(tags + _FIELD_WORDS)
    return st.recursive(
        _json_leaf,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, min_size=1, max_size=4),
        max_leaves=16,
    )


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "base.safetensors"
    ms.save({"a": np.arange(3.0), "x": b"\x80\x04K\x01."}, path)  # "x" holds bytes that unpickle to 1
    header, data = read_parts(path)
    return path.parent, header, data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(tree=_nodes(), meta=st.none() | _nodes())
def test_any_manifest_tree_loads_or_raises_a_modelsafe_error(fuzz_base, tree, meta):
    directory, header, data = fuzz_base
    manifest = json.loads(header["__metadata__"]["modelsafe"])
    manifest["tree"] = tree
    manifest["metadata"] = meta
    patched = dict(header, __metadata__=dict(header["__metadata__"], modelsafe=manifest))
    path = directory / "fuzzed.safetensors"
    path.write_bytes(sealed_file(patched, data))
    def open_metadata():
        with ms.open(path) as reader:
            return reader.metadata

    def open_load():
        with ms.open(path) as reader:
            return reader.load()

    for call in (lambda: ms.load(path), open_metadata, open_load):
        try:
            call()
        except ms.ModelsafeError:
            pass


def _random_header(rng: random.Random, data_len: int) -> dict:
    codes = ["F32", "F16", "BF16", "I64", "U8", "BOOL", "C64", "F8_E4M3", "F8_E8M0", "X9", ""]
    header = {}
    for i in range(rng.randint(1, 3)):
        shape = [rng.choice([0, 1, 2, 3, 4, 7, 10**6, 2**40, -1]) for _ in range(rng.randint(0, 3))]
        begin = rng.choice([0, 0, 4, 8, 16, data_len, data_len + 8, -4, 2**63])
        end = rng.choice([begin, begin + 4, begin + 8, begin + 16, data_len, 2**64, begin - 1])
        header[rng.choice(["a", "b", "c", f"t{i}"])] = {"dtype": rng.choice(codes), "shape": shape,
                                                        "data_offsets": [begin, end]}
    if rng.random() < 0.3:
        header["__metadata__"] = {"format": "pt"}
    return header


def test_random_headers_load_exactly_or_fail_cleanly(tmp_path):
    """Random (mostly invalid) headers: each file is refused, or is valid and reads as safetensors reads it."""
    rng = random.Random(99)
    paths = []
    for i in range(400):
        data = bytes(rng.choice([0, 4, 8, 16, 24]))
        header = _random_header(rng, len(data))
        path = tmp_path / f"r{i}.safetensors"
        path.write_bytes(raw_file(header, data))
        paths.append(path)
    results = run_capped([{"path": str(p)} for p in paths], torch=True)
    loaded = 0
    for path, result in zip(paths, results):
        if result.get("ok"):  # then it is a valid file: it must read as plain safetensors reads it
            loaded += 1
            ours = ms.load(path)
            theirs = st_load_file(str(path))
            assert set(ours) == set(theirs), path.name
            for key, tensor in theirs.items():
                assert ours[key].shape == tensor.shape and ours[key].dtype == tensor.dtype, (path.name, key)
            continue
        assert_corrupt(result, path, what=path.name)
    assert loaded < len(paths)  # the generator produces invalid files; a valid one now and then is fine
