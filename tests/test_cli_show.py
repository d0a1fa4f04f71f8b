"""``modelsafe show``: metadata, recipes and the tensor table (modelsafe.cli.inspect, .describe)."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import modelsafe as ms
from modelsafe.cli.describe import find_recipes, scalar_values, summarize_recipe

from cli_support import invoke, make_run, run_process


@pytest.fixture
def sample(tmp_path):
    path = tmp_path / "sample.safetensors"
    state = {
        "encoder.weight": np.zeros((3, 5), np.float32),
        "encoder.bias": np.zeros(3, ml_dtypes.bfloat16),
        "step": np.array(7, np.int64),
        "mask": np.ones((2, 2), bool),
    }
    ms.save(state, path, metadata={"epoch": 12, "note": "warm-up done", "loss": 0.125})
    return path


def test_table_lists_every_tensor_with_dtype_shape_bytes_and_total(sample):
    result = invoke("show", sample)
    assert result.code == 0, result.err
    out = result.out
    for name, dtype, shape, nbytes in [
        ("encoder.weight", "float32", "[3, 5]", "60"),
        ("encoder.bias", "bfloat16", "[3]", "6"),
        ("step", "int64", "[]", "8"),
        ("mask", "bool", "[2, 2]", "4"),
    ]:
        line = next(line for line in out.splitlines() if f" {name} " in line)
        assert dtype in line and shape in line and nbytes in line, line
    assert "4 stored" in out and "78" in out  # 60 + 6 + 8 + 4 bytes
    assert "epoch: 12" in out and "note: warm-up done" in out and "loss: 0.125" in out
    assert "modelsafe format 1.0" in out


def test_json_document(sample):
    document = invoke("show", sample, "--json").json()
    assert document["modelsafe"] is True and document["format_version"] == "1.0"
    assert document["metadata"] == {"epoch": 12, "note": "warm-up done", "loss": 0.125}
    assert [t["name"] for t in document["tensors"]] == ["encoder.weight", "encoder.bias", "step", "mask"]
    weight = document["tensors"][0]
    assert (weight["dtype"], weight["shape"], weight["bytes"]) == ("float32", [3, 5], 60)
    assert document["totals"] == {"tensors": 4, "names": 4, "bytes": 78}
    assert document["recipes"] == [] and document["pickled"] == []


def test_filter_and_no_tensors(sample):
    document = invoke("show", sample, "--filter", "encoder.*", "--json").json()
    assert [t["name"] for t in document["tensors"]] == ["encoder.weight", "encoder.bias"]
    result = invoke("show", sample, "--no-tensors")
    assert result.code == 0 and "encoder.weight" not in result.out and "epoch: 12" in result.out


def test_recipes_of_model_optimizer_and_scheduler(tmp_path):
    torch = pytest.importorskip("torch")  # torch is part of the dev environment; the rest runs on numpy
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5)
    path = tmp_path / "full.safetensors"
    ms.save({"model": model, "optimizer": opt, "scheduler": sched, "epoch": 3}, path)
    result = invoke("show", path)
    assert result.code == 0, result.err
    assert 'obj["model"]' in result.out and "torch.nn.Sequential(torch.nn.Linear(in_features=4, out_features=3)" in result.out
    assert 'obj["optimizer"]' in result.out and "lr=0.05" in result.out
    assert 'obj["scheduler"]' in result.out and "StepLR(step_size=5" in result.out
    document = invoke("show", path, "--json").json()
    assert [r["path"] for r in document["recipes"]] == ['obj["model"]', 'obj["optimizer"]', 'obj["scheduler"]']
    assert document["recipes"][0]["recipe"]["name"] == "torch.nn.Sequential"


def test_find_recipes_walks_every_container_kind():
    obj = {"object": "thing", "recipe": {"name": "pkg.Net", "args": [{"float": 0.5}], "kwargs": [["depth", 3]]}}
    tree = {"dict": [
        ["a", [obj]],
        [{"int": "7"}, {"tuple": [1, obj]}],
        ["c", {"namedtuple": "m:P", "fields": ["x"], "items": [obj]}],
        ["d", {"dataclass": "m:D", "fields": [["f", obj]]}],
        ["e", {"tensor": "e"}],
    ]}
    rows = list(find_recipes(tree))
    assert [r.path for r in rows] == ['obj["a"][0]', "obj[7][1]", 'obj["c"].x', 'obj["d"].f']
    assert rows[0].summary == "pkg.Net(0.5, depth=3)"
    assert list(find_recipes({"dict": [["w", {"tensor": "w"}]]})) == []


def test_summarize_recipe_falls_back_to_json_and_clips():
    assert summarize_recipe({"weird": 1}) == '{"weird":1}'
    assert len(summarize_recipe({"name": "x", "args": ["y" * 500]})) == 160


def test_scalar_values_of_a_tree():
    tree = {"dict": [["epoch", 5], ["loss", {"float": 0.5}], ["big", {"int": "123456789012345678901"}],
                     ["w", {"tensor": "w"}], ["t", {"tuple": ["a", None]}]]}
    assert dict(scalar_values(tree)) == {
        'obj["epoch"]': 5, 'obj["loss"]': 0.5, 'obj["big"]': 123456789012345678901, 'obj["t"][0]': "a", 'obj["t"][1]': None,
    }


def test_tied_tensors_and_pickles_are_marked(tmp_path):
    w = np.arange(6, dtype=np.float32)
    path = tmp_path / "tied.safetensors"
    ms.save({"embed": w, "head": w, "extra": complex(1, 2)}, path, allow_pickle=True)
    document = invoke("show", path, "--json").json()
    tied = [t for t in document["tensors"] if t.get("tied_to")]
    assert [(t["name"], t["tied_to"]) for t in tied] == [("head", "embed")]
    assert document["totals"]["bytes"] == 24 + next(t["bytes"] for t in document["tensors"] if t["kind"] == "pickle")
    assert document["pickled"] == ["extra"]
    out = invoke("show", path).out
    assert "tied to embed" in out and "pickled object" in out and "allow_pickle=True" in out


def test_plain_safetensors_file(tmp_path):
    from safetensors.numpy import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"a": np.ones((2, 3), np.float16)}, str(path), metadata={"format": "np"})
    result = invoke("show", path)
    assert result.code == 0 and "plain safetensors" in result.out and "float16" in result.out
    assert invoke("show", path, "--json").json()["modelsafe"] is False


def test_checkpoint_directory_shows_step_metrics_and_shards(tmp_path):
    make_run(tmp_path / "run", [0.5, 0.25])
    document = invoke("show", f"{tmp_path / 'run'}@1", "--json").json()
    assert document["checkpoint"]["step"] == 1
    assert document["checkpoint"]["metrics"] == {"val_loss": 0.25, "acc": 0.75}
    assert {t["file"] for t in document["tensors"]} == {"state-00001-of-00001.safetensors"}
    out = invoke("show", f"{tmp_path / 'run'}@latest").out
    assert "step: 1" in out and "state-00001-of-00001.safetensors" in out


def test_missing_and_corrupt_files_exit_1(tmp_path):
    result = invoke("show", tmp_path / "absent.safetensors")
    assert result.code == 1 and "absent.safetensors" in result.err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ")
    result = invoke("show", bad)
    assert result.code == 1 and "bad.safetensors" in result.err and "not valid JSON" in result.err


def test_subprocess(sample):
    result = run_process("show", sample)
    assert result.code == 0, result.err
    assert "encoder.weight" in result.out and "bfloat16" in result.out
    assert run_process("show").code == 2  # missing argument: usage


def test_control_characters_from_a_file_never_reach_the_terminal(tmp_path):
    from modelsafe.cli.output import Column, TableSpec

    evil = "w\x1b]0;owned\x07\x1b[2J"
    path = tmp_path / "evil.safetensors"
    ms.save({evil: np.ones(2, np.float32)}, path, metadata={"note\x1b[31m": "x\x1b[5m"})
    for args in (("show", path), ("verify", path), ("diff", path, path)):
        result = invoke(*args)
        assert result.code == 0
        assert "\x1b" not in result.out and "\x07" not in result.out
    out = invoke("show", path).out
    assert "w\\x1b]0;owned\\x07\\x1b[2J" in out and "note\\x1b[31m: x\\x1b[5m" in out
    assert invoke("show", path, "--json").json()["tensors"][0]["name"] == evil  # JSON keeps the exact name
    table = TableSpec([Column("name")])
    table.add(evil)
    assert "\x1b" not in table.plain()
    flip = tmp_path / "evil2.safetensors"
    flip.write_bytes(path.read_bytes()[:-1] + bytes([path.read_bytes()[-1] ^ 1]))
    result = invoke("verify", flip)
    assert result.code == 1 and "\x1b" not in result.out + result.err


def test_a_versions_field_of_the_wrong_shape_is_ignored_not_a_crash(tmp_path):
    """Found by the fuzz harness: manifest['versions'] as a list of triples crashed ``show``."""
    import json
    import struct

    from fuzzcraft import MANIFEST_KEY, reseal_bytes

    path = tmp_path / "odd.safetensors"
    ms.save({"w": np.zeros(2)}, path)
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    manifest = json.loads(header["__metadata__"][MANIFEST_KEY])
    manifest["versions"] = [["a", "b", "c"]]
    header["__metadata__"][MANIFEST_KEY] = json.dumps(manifest)
    text = json.dumps(header).encode()
    text += b" " * (n - len(text)) if len(text) <= n else b""
    assert len(text) == n  # same length: offsets stay valid
    path.write_bytes(reseal_bytes(blob[:8] + text + blob[8 + n:]))
    result = invoke("show", str(path), "--json")
    assert result.code == 0, result
    assert result.json()["versions"] == {}
