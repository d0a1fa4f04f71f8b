"""Checkpoint names: any template and metrics give a safe path component or a clear ValueError."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, strategies as st

from modelsafe.checkpoint_names import format_name, normalize_metrics


@given(st.text(max_size=40), st.integers(0, 10**6))
def test_a_name_is_one_safe_path_component_or_refused(tag, step):
    try:
        name = format_name("{tag}-{step}", step, {"tag": tag})
    except ValueError as exc:
        assert "name" in str(exc)
        return
    assert name and not name.startswith(".") and len(name) <= 200
    assert not any(c in name for c in "/\\\0:")
    root = os.path.abspath("run")
    assert os.path.dirname(os.path.normpath(os.path.join(root, name))) == root


@given(st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5))
def test_metrics_normalize_to_plain_numbers(value, count):
    out = normalize_metrics({"loss": value, "n": count})
    assert type(out["loss"]) is float and type(out["n"]) is int


def test_bad_metrics_are_refused():
    with pytest.raises(TypeError, match="'acc'"):
        normalize_metrics({"acc": [1, 2]})
    with pytest.raises(TypeError, match="non-empty strings"):
        normalize_metrics({1: 0.5})
    with pytest.raises(TypeError):
        normalize_metrics({"flag": True})
