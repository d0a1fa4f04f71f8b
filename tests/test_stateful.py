"""The Stateful protocol (modelsafe.stateful): objects with state_dict()/load_state_dict() saved by their state."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import modelsafe as ms


class Position:
    """A user class of the protocol (not registered, not rebuildable)."""

    def __init__(self) -> None:
        self.seen, self.order = 0, [0]

    def state_dict(self) -> dict:
        return {"seen": self.seen, "order": np.asarray(self.order)}

    def load_state_dict(self, state: dict) -> None:
        self.seen, self.order = state["seen"], state["order"].tolist()


@ms.rebuildable
class Window:
    def __init__(self, size: int) -> None:
        self.size, self.filled = size, 0

    def state_dict(self) -> dict:
        return {"filled": self.filled}

    def load_state_dict(self, state: dict) -> None:
        self.filled = state["filled"]


@settings(max_examples=25, deadline=None)
@given(seen=st.integers(0, 2**62), order=st.lists(st.integers(-2**31, 2**31 - 1), min_size=1, max_size=20))
def test_state_round_trips_and_restores_in_place(tmp_path_factory, seen, order):
    path = tmp_path_factory.mktemp("s") / "p.safetensors"
    pos = Position()
    pos.seen, pos.order = seen, order
    ms.save({"position": pos, "epoch": 3}, path)
    loaded = ms.load(path)  # the state dict: the class is never resolved from the file
    assert loaded["position"]["seen"] == seen and loaded["position"]["order"].tolist() == order
    fresh = {"position": Position(), "epoch": 0}
    report = ms.load_into(fresh, path)
    assert report.ok and fresh["position"].seen == seen and fresh["position"].order == order and fresh["epoch"] == 3


def test_a_rebuildable_stateful_object_comes_back_rebuilt_with_its_state(tmp_path):
    window = Window(8)
    window.filled = 5
    ms.save({"w": window}, tmp_path / "w.safetensors")
    back = ms.load(tmp_path / "w.safetensors")["w"]
    assert type(back) is Window and (back.size, back.filled) == (8, 5)


def test_the_class_a_file_names_is_display_only(tmp_path):
    ms.save(Position(), tmp_path / "p.safetensors")
    with ms.open(tmp_path / "p.safetensors") as reader:
        node = reader.manifest["tree"]
    assert node["object"] == "stateful" and node["class"].endswith("Position") and "recipe" not in node
    assert ms.load(tmp_path / "p.safetensors")["seen"] == 0


def test_load_into_a_stateful_object_from_a_saved_state_dict(tmp_path):
    pos = Position()
    pos.seen = 9
    ms.save(pos.state_dict(), tmp_path / "sd.safetensors")  # saved as a plain dict, restored into the object
    fresh = Position()
    assert ms.load_into(fresh, tmp_path / "sd.safetensors").loaded == ["<root>"]
    assert fresh.seen == 9


def test_a_state_the_object_refuses_is_an_incompatible_state_error(tmp_path):
    ms.save({"position": {"unrelated": 1}}, tmp_path / "x.safetensors")
    with pytest.raises(ms.IncompatibleStateError, match="KeyError"):
        ms.load_into({"position": Position()}, tmp_path / "x.safetensors")


def test_a_stateful_dataloader_resumes_mid_epoch_in_a_fresh_process(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchdata")
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    from stateful_resume import loader

    model, data = torch.nn.Linear(2, 2), loader()
    run = ms.Checkpoints(tmp_path / "run")
    batches = iter(data)
    first = [next(batches).tolist() for _ in range(3)]
    run.save({"model": model, "loader": data}, step=3)
    rest = [b.tolist() for b in batches]  # what the uninterrupted loader yields next
    assert len(rest) == 7 and first[0] != sorted(first[0])  # mid-epoch, shuffled

    script = pathlib.Path(__file__).parent / "stateful_resume.py"
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    resumed = json.loads(out.stdout.strip().splitlines()[-1])
    assert resumed["step"] == 3
    assert resumed["rest"] == rest
    assert resumed["weight"] == model.weight.tolist()
