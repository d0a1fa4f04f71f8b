"""The typed plan the writer consumes: frozen Payload records in a FlatState."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import modelsafe as ms
from modelsafe.async_save import snapshot
from modelsafe.format.plan import FlatState, Payload
from modelsafe.format.writer import write_file, write_plain_file
from modelsafe.tree import flatten


def test_flatten_gives_a_flat_state_of_payload_records():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    state = flatten({"a": a, "b": b"raw", "tied": a})
    assert isinstance(state, FlatState) and all(isinstance(p, Payload) for p in state.payloads)
    a_payload, b_payload = state.payloads
    assert (a_payload.name, a_payload.kind, a_payload.dtype, a_payload.shape, a_payload.framework) == \
        ("a", "tensor", "float32", (2, 3), "numpy")
    assert (b_payload.kind, b_payload.framework, b_payload.nbytes) == ("bytes", None, 3)
    assert dict(state.aliases) == {"tied": "a"} and state.nbytes == 24 + 3
    assert bytes(a_payload.host_bytes()) == a.tobytes()


def test_records_are_frozen():
    state = flatten({"a": np.zeros(2)})
    with pytest.raises(AttributeError):
        state.payloads[0].name = "other"
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.skeleton = None


def test_a_snapshot_owns_its_bytes_and_writes_the_same_file(tmp_path):
    a = np.arange(4, dtype=np.int64)
    state = flatten({"a": a})
    copy = snapshot(state)
    a += 100
    with open(tmp_path / "f", "wb") as f:
        write_file(f, copy)
    assert np.array_equal(ms.load(tmp_path / "f")["a"], np.arange(4))


def test_a_known_checksum_is_written_unhashed(tmp_path):
    payload = Payload.of_bytes("b", b"abc", checksum="0123456789abcdef")
    with open(tmp_path / "f", "wb") as f:
        write_file(f, FlatState.of_payloads([payload]))
    with ms.open(tmp_path / "f") as r:
        assert r.manifest["tensors"]["b"]["xxh3"] == "0123456789abcdef"


def test_plain_file_holds_tensors_and_aliases_only(tmp_path):
    from safetensors import safe_open

    state = flatten({"w": np.ones(3, np.float32), "v": np.zeros(2, np.float64)})
    state = FlatState.of_payloads(state.payloads, {"u": "w"})
    with open(tmp_path / "p.safetensors", "wb") as f:
        size = write_plain_file(f, state, user_metadata={"note": "x", "format": "np"})
    assert size == (tmp_path / "p.safetensors").stat().st_size
    with safe_open(str(tmp_path / "p.safetensors"), "np") as f:
        assert sorted(f.keys()) == ["v", "w"] and f.metadata() == {"u": "w", "note": "x", "format": "np"}
        assert np.array_equal(f.get_tensor("w"), np.ones(3, np.float32))
