"""Whole loads map the file (POSIX) or read it; either way the loaded tensors are the caller's own."""

import os

import numpy as np
import pytest

import modelsafe as ms
from modelsafe.format import reader

torch = pytest.importorskip("torch")


@pytest.fixture(params=[True, False], ids=["mapped", "read"])
def load_mode(request, monkeypatch):
    monkeypatch.setattr(reader, "MAP_WHOLE_LOADS", request.param)
    return request.param


def test_loaded_tensors_are_writable_and_private(tmp_path, load_mode):
    path = tmp_path / "s.safetensors"
    ms.save({"w": torch.ones(50_000), "n": np.arange(5)}, path)
    first = ms.load(path)
    first["w"].mul_(3)
    first["n"][0] = 99
    again = ms.load(path)
    assert torch.equal(again["w"], torch.ones(50_000)) and again["n"][0] == 0  # the file never changed
    assert first["w"][7].item() == 3.0 and first["n"][0] == 99


def test_a_save_over_the_file_leaves_loaded_tensors_alone(tmp_path, load_mode):
    path = tmp_path / "s.safetensors"
    ms.save({"w": torch.ones(50_000)}, path)
    old = ms.load(path)
    ms.save({"w": torch.zeros(50_000)}, path)
    assert torch.equal(old["w"], torch.ones(50_000))
    assert torch.equal(ms.load(path)["w"], torch.zeros(50_000))
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]


def test_mapped_and_read_loads_agree_and_both_verify(tmp_path, monkeypatch):
    path = tmp_path / "s.safetensors"
    state = {"a": torch.randn(1000), "b": torch.arange(7, dtype=torch.int16), "c": torch.tensor(2.5, dtype=torch.bfloat16)}
    ms.save(state, path)
    for mapped in (True, False):
        monkeypatch.setattr(reader, "MAP_WHOLE_LOADS", mapped)
        back = ms.load(path)
        assert all(torch.equal(back[k], state[k]) and back[k].dtype == state[k].dtype for k in state)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    for mapped in (True, False):
        monkeypatch.setattr(reader, "MAP_WHOLE_LOADS", mapped)
        with pytest.raises(ms.CorruptCheckpointError):
            ms.load(path)
        ms.load(path, verify=False)  # unchecked, but still loads


def test_a_file_system_that_cannot_map_falls_back_to_reading(tmp_path, monkeypatch):
    path = tmp_path / "s.safetensors"
    ms.save({"w": torch.arange(10)}, path)

    def no_map(self, **kwargs):
        raise OSError(19, "No such device")

    monkeypatch.setattr(reader.FileSource, "map_data", no_map)
    monkeypatch.setattr(reader, "MAP_WHOLE_LOADS", True)
    assert torch.equal(ms.load(path)["w"], torch.arange(10))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc (Linux)")
def test_loaded_states_hold_no_file_descriptor_and_unmap_when_freed(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "MAP_WHOLE_LOADS", True)
    paths = []
    for i in range(30):
        paths.append(tmp_path / f"s{i}.safetensors")
        ms.save({"w": torch.full((1000,), float(i)), "n": np.arange(i + 1)}, paths[-1])
    fds_before = len(os.listdir("/proc/self/fd"))
    states = [ms.load(p) for p in paths]
    assert len(os.listdir("/proc/self/fd")) <= fds_before  # 30 states alive, no descriptor kept
    for p in paths:
        p.unlink()  # the mappings keep the bytes readable
    assert all(s["w"][3].item() == i and s["n"][-1] == i for i, s in enumerate(states))

    def mapped():
        with open("/proc/self/maps") as f:
            return sum(str(tmp_path) in line for line in f)

    assert mapped() >= 30
    del states
    assert mapped() == 0  # the last tensors gone, every mapping is released
