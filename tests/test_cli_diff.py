"""``modelsafe diff``: added/removed/changed tensors, max abs diff, metadata and values (cli.compare)."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

import modelsafe as ms
from modelsafe.cli.compare import CHUNK_ELEMENTS, as_numbers, compare_values
from modelsafe.format.dtypes import BY_NAME

from cli_support import flip_byte, invoke, make_run, run_process, tensor_span


def _bytes(arr: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(arr).reshape(-1).view(np.uint8)


def _max_diff(a: np.ndarray, b: np.ndarray, dtype_a: str | None = None, dtype_b: str | None = None) -> tuple[float, int]:
    da = BY_NAME[dtype_a or str(a.dtype)]
    db = BY_NAME[dtype_b or str(b.dtype)]
    return compare_values(_bytes(a), da, _bytes(b), db, a.size)


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64", "int8", "int64", "uint8"])
def test_max_abs_diff_plain_dtypes(dtype):
    a = np.array([1, 2, 3, 4], dtype)
    b = np.array([1, 5, 3, 2], dtype)
    assert _max_diff(a, b) == (3.0, 2)


def test_unsigned_difference_does_not_wrap():
    assert _max_diff(np.array([0], np.uint8), np.array([255], np.uint8)) == (255.0, 1)
    big = np.array([2**63], np.uint64)
    assert _max_diff(big, np.array([0], np.uint64))[0] == float(2**63)


@pytest.mark.parametrize("dtype", ["bfloat16", "float8_e4m3fn", "float8_e5m2"])
def test_ml_dtypes_compare_in_float64(dtype):
    npdt = getattr(ml_dtypes, dtype)
    a = np.array([1.0, 2.0, -4.0], npdt)
    b = np.array([1.0, 3.0, -2.0], npdt)
    assert _max_diff(a, b) == (2.0, 2)


def test_complex_uses_absolute_value():
    a = np.array([1 + 1j, 0], np.complex64)
    b = np.array([4 + 5j, 0], np.complex64)
    assert _max_diff(a, b) == (5.0, 1)  # |(-3) + (-4)j| = 5


def test_complex32_from_float16_pairs():
    pairs_a = np.array([1, 2, 3, 4], np.float16)  # (1+2j), (3+4j)
    pairs_b = np.array([1, 2, 0, 0], np.float16)
    assert list(as_numbers(_bytes(pairs_a), BY_NAME["complex32"])) == [1 + 2j, 3 + 4j]
    assert compare_values(_bytes(pairs_a), BY_NAME["complex32"], _bytes(pairs_b), BY_NAME["complex32"], 2) == (5.0, 1)


def test_nan_and_inf_semantics():
    nan, inf = float("nan"), float("inf")
    assert _max_diff(np.array([nan, inf, 1.0]), np.array([nan, inf, 1.0])) == (0.0, 0)
    worst, differing = _max_diff(np.array([nan, 1.0]), np.array([1.0, 1.0]))
    assert math.isnan(worst) and differing == 1
    assert _max_diff(np.array([inf]), np.array([1.0])) == (inf, 1)


def test_large_tensors_are_compared_in_chunks():
    n = CHUNK_ELEMENTS * 2 + 5
    a = np.zeros(n, np.float32)
    b = a.copy()
    b[-1] = 7.0
    b[3] = -2.0
    assert _max_diff(a, b) == (7.0, 2)


@given(hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(-1e6, 1e6, width=32)),
       hnp.arrays(np.float32, st.integers(1, 40), elements=st.floats(-1e6, 1e6, width=32)))
def test_max_abs_diff_matches_numpy(a, b):
    n = min(a.size, b.size)
    a, b = a[:n], b[:n]
    expected = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    assert _max_diff(a, b) == (expected, int(np.count_nonzero(a != b)))


@pytest.fixture
def pair(tmp_path):
    a = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "same": np.ones(4, np.float64),
        "gone": np.zeros(2, np.int32),
        "widen": np.array([1.0, 2.0], np.float32),
        "reshape": np.zeros((2, 2), np.float32),
        "half": np.array([1.0, 2.0], ml_dtypes.bfloat16),
        "epoch": 5,
    }
    b = dict(a)
    del b["gone"]
    b["w"] = a["w"].copy()
    b["w"][1, 2] += 0.25
    b["new"] = np.ones(3, np.int8)
    b["widen"] = np.array([1.0, 2.0], np.float64)
    b["reshape"] = np.zeros(4, np.float32)
    b["half"] = np.array([1.0, 2.5], ml_dtypes.bfloat16)
    b["epoch"] = 6
    pa, pb = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    ms.save(a, pa, metadata={"note": "first", "lr": 0.1, "nested": {"k": 1}})
    ms.save(b, pb, metadata={"note": "second", "extra": True, "nested": {"k": 2}})
    return pa, pb


def test_diff_json_reports_everything(pair):
    result = invoke("diff", *pair, "--json")
    assert result.code == 0, result.err
    d = result.json()
    assert d["identical"] is False
    assert d["added"] == ["new"] and d["removed"] == ["gone"]
    changed = {c["name"]: c for c in d["changed"]}
    assert set(changed) == {"w", "widen", "reshape", "half"}
    assert changed["w"]["max_abs_diff"] == 0.25 and changed["w"]["differing"] == 1 and changed["w"]["elements"] == 6
    assert changed["widen"]["dtype"] == ["float32", "float64"] and changed["widen"]["max_abs_diff"] == 0.0
    assert changed["reshape"]["shape"] == [[2, 2], [4]] and changed["reshape"]["max_abs_diff"] is None
    assert changed["half"]["max_abs_diff"] == 0.5
    assert d["unchanged"] == 1  # "same"
    assert d["metadata"] == {
        "added": {"extra": True}, "removed": {"lr": 0.1},
        "changed": {"note": ["first", "second"], "nested.k": [1, 2]},
    }
    assert d["values"]["changed"] == {'obj["epoch"]': [5, 6]}


def test_diff_human_output(pair):
    result = invoke("diff", *pair)
    assert result.code == 0
    out = result.out
    assert "+ new" in out and "- gone" in out
    assert "1 added, 1 removed, 4 changed, 1 unchanged" in out
    assert "float32 -> float64" in out and "[2, 2] -> [4]" in out
    w_line = next(line for line in out.splitlines() if " w " in line)
    assert "0.25" in w_line and "1/6" in w_line
    assert "~ note: first -> second" in out and '~ obj["epoch"]: 5 -> 6' in out


def test_identical_files_and_exit_code_flag(pair, tmp_path):
    a, b = pair
    result = invoke("diff", a, a, "--exit-code")
    assert result.code == 0 and "identical" in result.out
    assert invoke("diff", a, b).code == 0
    result = invoke("diff", a, b, "--exit-code")
    assert result.code == 1 and "differ" in result.err


def test_equal_checksums_are_not_read(pair, monkeypatch):
    a, _ = pair
    from modelsafe.format.reader import FileSource

    def refuse(self, *args, **kwargs):
        raise AssertionError("diff read tensor bytes although every checksum matched")

    monkeypatch.setattr(FileSource, "map_data", refuse)
    monkeypatch.setattr(FileSource, "read_data", refuse)
    assert invoke("diff", a, a, "--json").json()["identical"] is True


def test_corrupt_tensor_is_an_error_not_a_difference(pair):
    a, b = pair
    begin, _ = tensor_span(b, "w")
    flip_byte(b, begin)
    result = invoke("diff", a, b)
    assert result.code == 1 and "checksum" in result.err and str(b) in result.err


def test_diff_checkpoints_of_a_run(tmp_path):
    make_run(tmp_path / "run", [0.5, 0.3, 0.4])
    d = invoke("diff", f"{tmp_path / 'run'}@best", f"{tmp_path / 'run'}@latest", "--json").json()
    assert [c["name"] for c in d["changed"]] == ["model.w"]
    assert d["changed"][0]["max_abs_diff"] == 1.0  # tensors hold the step: 1 vs 2
    assert d["values"]["changed"] == {'obj["epoch"]': [1, 2]}


def test_subprocess(pair):
    result = run_process("diff", *pair, "--exit-code")
    assert result.code == 1
    assert "max abs diff" in result.out
    assert run_process("diff", pair[0]).code == 2


def test_diff_a_checkpoint_against_its_export(tmp_path):
    make_run(tmp_path / "run", [0.5, 0.3])
    exported = tmp_path / "model.safetensors"
    ms.Checkpoints(tmp_path / "run").export(exported, which=1)
    ms.save({"w": np.full((4, 4), 1, np.float32), "b": np.arange(4, dtype=np.int64) + 1}, tmp_path / "edited.safetensors")
    d = invoke("diff", exported, tmp_path / "edited.safetensors", "--json").json()
    assert d["unchanged"] == 1 and [(c["name"], c["max_abs_diff"]) for c in d["changed"]] == [("b", 1.0)]
    d = invoke("diff", f"{tmp_path / 'run'}@1", exported, "--json").json()
    assert d["removed"] == ["model.w", "model.b"] and d["added"] == ["w", "b"]


def test_progress_advances_by_exactly_the_bytes_announced(pair):
    from modelsafe.cli.compare import bytes_to_compare, compare
    from modelsafe.sources import open_source

    class Counter:
        total = 0

        def advance(self, n):
            self.total += n

    counter = Counter()
    with open_source(pair[0]) as a, open_source(pair[1]) as b:
        announced = bytes_to_compare(a, b)
        compare(a, b, progress=counter)
    assert announced == counter.total > 0
