"""modelsafe.integrations.transformers and save_pretrained directories, with a tiny BERT built locally."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import modelsafe as ms  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
SCRIPT = HERE / "transformers_train.py"
sys.path.insert(0, str(HERE))
from transformers_train import tiny_bert  # noqa: E402


def train(directory, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(SCRIPT), str(directory), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finished(proc: subprocess.Popen, code: int = 0) -> str:
    out, _ = proc.communicate(timeout=500)
    assert proc.returncode == code, out
    return out


def test_a_killed_trainer_resumes_to_the_same_weights(tmp_path):
    straight, killed = train(tmp_path / "straight"), train(tmp_path / "killed", "--stop-after", "10")
    out = finished(straight)
    assert "steps run here: 14" in out and "trainer files: []" in out  # no pickled Trainer checkpoints
    finished(killed, code=3)
    run = ms.Checkpoints(tmp_path / "killed/run")
    assert [c.step for c in run.list()] == [4, 8]  # saved every 4 steps, keep_last=2; killed at step 10

    out = finished(train(tmp_path / "killed", "--resume"))
    assert "steps run here: 6" in out  # resumed at step 8 (mid-epoch), not started over
    resumed, expected = ms.load(tmp_path / "killed/final.safetensors"), ms.load(tmp_path / "straight/final.safetensors")
    assert resumed["step"] == expected["step"] == 14
    for key, value in expected["model"].items():
        assert torch.equal(resumed["model"][key], value), key

    latest = ms.load(tmp_path / "killed/run@latest")
    assert json.loads(latest["trainer_state"])["global_step"] == 14  # the Trainer saves at the end too
    assert set(latest) == {"model", "optimizer", "scheduler", "trainer_state"}


def test_save_pretrained_shards_load_with_every_verb(tmp_path):
    torch.manual_seed(0)
    model = tiny_bert().eval()
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 2  # really sharded

    fresh = tiny_bert().eval()
    report = ms.load_into(fresh, tmp_path)
    assert report.ok and sorted(report.loaded) == sorted(index["weight_map"])
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=ids).logits, model(input_ids=ids).logits)

    loaded = ms.load(tmp_path)
    assert set(loaded) == set(index["weight_map"])
    name = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(loaded[name], model.state_dict()[name])
    with ms.open(tmp_path) as reader:
        assert set(reader.keys()) == set(index["weight_map"])
        assert torch.equal(reader.get_slice(name)[2:4], model.state_dict()[name][2:4])


def test_a_single_file_save_pretrained_directory_loads(tmp_path):
    model = tiny_bert()
    model.save_pretrained(tmp_path)
    assert os.path.isfile(tmp_path / "model.safetensors")
    fresh = tiny_bert()
    assert ms.load_into(fresh, tmp_path).ok
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value)
