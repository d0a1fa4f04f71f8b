"""``modelsafe ls / prune / fork / export`` on runs of checkpoints (modelsafe.cli.runs)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import modelsafe as ms

from cli_support import invoke, make_run, run_process


@pytest.fixture
def run(tmp_path):
    path = tmp_path / "exp1"
    make_run(path, [0.9, 0.2, 0.5, 0.3, 0.6, 0.8], name="epoch{step:03d}-val_loss{val_loss:.4f}")
    return path


NAMES = [f"epoch{s:03d}-val_loss{v:.4f}" for s, v in enumerate([0.9, 0.2, 0.5, 0.3, 0.6, 0.8])]


def test_ls_table(run):
    result = invoke("ls", run)
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    for name in NAMES:
        assert any(name in line for line in lines)
    best_line = next(line for line in lines if NAMES[1] in line)
    latest_line = next(line for line in lines if NAMES[5] in line)
    assert "best" in best_line and "latest" in latest_line
    assert "best" not in latest_line
    header = next(line for line in lines if "name" in line and "step" in line)
    for column in ("time", "val_loss", "acc", "size", "marks"):
        assert column in header
    assert "6 checkpoint(s)" in result.out and "best by val_loss (min)" in result.out


def test_ls_json(run):
    document = invoke("ls", run, "--json").json()
    assert document["monitor"] == "val_loss" and document["mode"] == "min"
    rows = document["checkpoints"]
    assert [r["name"] for r in rows] == NAMES
    assert [r["step"] for r in rows] == list(range(6))
    assert rows[1]["metrics"] == {"val_loss": 0.2, "acc": 0.8}
    assert [r["name"] for r in rows if r["best"]] == [NAMES[1]]
    assert [r["name"] for r in rows if r["latest"]] == [NAMES[5]]
    assert all(r["size"] > 0 and os.path.isdir(r["path"]) for r in rows)


def test_ls_monitor_override(run):
    rows = invoke("ls", run, "--monitor", "acc", "--mode", "max", "--json").json()["checkpoints"]
    assert [r["name"] for r in rows if r["best"]] == [NAMES[1]]  # acc = 1 - val_loss
    rows = invoke("ls", run, "--monitor", "val_loss", "--mode", "max", "--json").json()["checkpoints"]
    assert [r["name"] for r in rows if r["best"]] == [NAMES[0]]


def test_ls_with_a_monitor_no_checkpoint_records_is_a_usage_error(run):
    result = invoke("ls", run, "--monitor", "val_los")
    assert result.code == 2
    assert "val_los" in result.err and "val_loss" in result.err  # names the typo and what the run records


def test_ls_reads_manifests_only(run, monkeypatch):
    from modelsafe.format import reader

    def refuse(*args, **kwargs):
        raise AssertionError("ls opened a shard")

    monkeypatch.setattr(reader.FileSource, "__init__", refuse)
    assert invoke("ls", run).code == 0


def test_ls_empty_missing_and_unreadable(tmp_path, run):
    (tmp_path / "empty").mkdir()
    result = invoke("ls", tmp_path / "empty")
    assert result.code == 0 and "no committed checkpoints" in result.out
    assert invoke("ls", tmp_path / "absent").code == 1
    (run / NAMES[2] / "manifest.json").write_text("{oops")
    result = invoke("ls", run)
    assert result.code == 0 and "unreadable" in result.out and NAMES[2] in result.out
    assert len(invoke("ls", run, "--json").json()["unreadable"]) == 1


def test_ls_of_a_single_checkpoint_is_a_usage_error(run):
    result = invoke("ls", run / NAMES[0])
    assert result.code == 2 and "not a run" in result.err


def test_prune_dry_run_deletes_nothing(run):
    result = invoke("prune", run, "--keep-last", "1", "--keep-best", "1", "--dry-run", "--json")
    assert result.code == 0, result.err
    document = result.json()
    assert [r["name"] for r in document["would_delete"]] == [NAMES[0], NAMES[2], NAMES[3], NAMES[4]]
    assert document["deleted"] == []
    assert sorted(os.listdir(run)) == sorted(NAMES + [n for n in os.listdir(run) if n.startswith(".")])


def test_prune_keeps_last_and_best_together(run):
    result = invoke("prune", run, "--keep-last", "2", "--keep-best", "2")
    assert result.code == 0, result.err
    assert "deleted 2 checkpoint(s)" in result.out
    kept = [i.name for i in ms.Checkpoints(run).list()]
    assert kept == [NAMES[1], NAMES[3], NAMES[4], NAMES[5]]  # best two (0.2, 0.3) and last two


def test_prune_never_deletes_the_newest(run):
    assert invoke("prune", run, "--keep-last", "0", "--keep-best", "1").code == 0
    assert [i.name for i in ms.Checkpoints(run).list()] == [NAMES[1], NAMES[5]]


def test_prune_with_another_monitor_keeps_the_run_settings(run):
    before = (run / ".modelsafe-run.json").read_text()
    assert invoke("prune", run, "--keep-last", "1", "--keep-best", "1", "--monitor", "acc", "--mode", "max").code == 0
    assert [i.name for i in ms.Checkpoints(run).list()] == [NAMES[1], NAMES[5]]
    assert (run / ".modelsafe-run.json").read_text() == before


def test_prune_usage_errors(run, tmp_path):
    assert invoke("prune", run).code == 2
    assert invoke("prune", run, "--keep-last", "-1").code == 2
    plain = tmp_path / "plain"
    make_run(plain, [0.1, 0.2], monitor=None)
    result = invoke("prune", plain, "--keep-best", "1")
    assert result.code == 2 and "--monitor" in result.err


def test_prune_refuses_while_a_writer_holds_the_run(run):
    writer = ms.Checkpoints(run, monitor="val_loss", name="epoch{step:03d}-val_loss{val_loss:.4f}")
    writer.save({"w": np.zeros(1)}, step=6, metrics={"val_loss": 0.1})
    try:
        result = invoke("prune", run, "--keep-last", "1")
        assert result.code == 1 and "another writer" in result.err
        assert len(ms.Checkpoints(run).list()) == 7
    finally:
        writer.close()


def test_fork_from_best_records_lineage(run, tmp_path):
    dst = tmp_path / "exp2"
    result = invoke("fork", run, dst, "--json")
    assert result.code == 0, result.err
    document = result.json()
    assert document["source"]["name"] == NAMES[1]
    infos = ms.Checkpoints(dst).list()
    assert [i.name for i in infos] == [NAMES[1]]
    assert ms.load(infos[0].path)["model"]["w"][0, 0] == 1.0
    lineage = invoke("ls", dst, "--json").json()["lineage"]
    assert lineage[-1]["checkpoint"] == NAMES[1] and lineage[-1]["step"] == 1
    settings = json.loads((dst / ".modelsafe-run.json").read_text())
    assert settings["monitor"] == "val_loss" and settings["name"] == "epoch{step:03d}-val_loss{val_loss:.4f}"


def test_fork_by_address_or_option(run, tmp_path):
    assert invoke("fork", f"{run}@3", tmp_path / "a").code == 0
    assert [i.step for i in ms.Checkpoints(tmp_path / "a").list()] == [3]
    assert invoke("fork", run, tmp_path / "b", "--from", "latest").code == 0
    assert [i.step for i in ms.Checkpoints(tmp_path / "b").list()] == [5]
    assert invoke("fork", f"{run}@3", tmp_path / "c", "--from", "best").code == 2
    assert invoke("fork", run / NAMES[2], tmp_path / "d").code == 0  # a checkpoint directory
    assert [i.step for i in ms.Checkpoints(tmp_path / "d").list()] == [2]


def test_fork_into_a_run_with_checkpoints_fails(run, tmp_path):
    other = tmp_path / "other"
    make_run(other, [0.4])
    result = invoke("fork", run, other)
    assert result.code == 1 and "already holds checkpoints" in result.err
    error = json.loads(invoke("fork", run, other, "--json").err)
    assert error["error"] == "RunConflictError" and error["exit_code"] == 1


def test_export_best_model_weights(run, tmp_path):
    out = tmp_path / "model.safetensors"
    result = invoke("export", run, out)
    assert result.code == 0, result.err
    assert NAMES[1] in result.out
    model = ms.load(out)
    assert set(model) == {"w", "b"} and model["w"][0, 0] == 1.0
    from safetensors.numpy import load_file

    assert set(load_file(str(out))) == {"w", "b"}  # a plain safetensors reader sees the weights


def test_export_by_step_address_and_checkpoint_dir(run, tmp_path):
    assert invoke("export", run, tmp_path / "a.safetensors", "--from", "4").code == 0
    assert ms.load(tmp_path / "a.safetensors")["w"][0, 0] == 4.0
    assert invoke("export", f"{run}@latest", tmp_path / "b.safetensors").code == 0
    assert ms.load(tmp_path / "b.safetensors")["w"][0, 0] == 5.0
    assert invoke("export", run / NAMES[2], tmp_path / "c.safetensors").code == 0
    assert ms.load(tmp_path / "c.safetensors")["w"][0, 0] == 2.0


def test_export_usage_errors(run, tmp_path):
    single = tmp_path / "single.safetensors"
    ms.save({"w": np.ones(1)}, single)
    assert invoke("export", single, tmp_path / "x.safetensors").code == 2
    assert invoke("export", f"{run}@1", tmp_path / "y.safetensors", "--from", "2").code == 2
    assert invoke("export", f"{run}@99", tmp_path / "z.safetensors").code == 1


def test_subprocess(run, tmp_path):
    result = run_process("ls", run)
    assert result.code == 0 and NAMES[1] in result.out
    result = run_process("prune", run, "--keep-last", "1", "--keep-best", "1")
    assert result.code == 0, result.err
    assert len(ms.Checkpoints(run).list()) == 2
    assert run_process("fork", f"{run}@best", tmp_path / "forked").code == 0
    assert run_process("export", tmp_path / "forked", tmp_path / "m.safetensors").code == 0
    assert os.path.getsize(tmp_path / "m.safetensors") > 0
    assert run_process("prune", run).code == 2


def test_ls_shows_metrics_exactly_as_recorded(tmp_path):
    ck = ms.Checkpoints(tmp_path / "r", monitor="loss", name="s{step}-loss{loss:.4f}")
    ck.save({"w": np.zeros(1)}, step=0, metrics={"loss": 1.0845})
    ck.save({"w": np.zeros(1)}, step=1, metrics={"loss": 123456.789})
    ck.close()
    result = invoke("ls", tmp_path / "r")
    assert result.code == 0, result.err
    row = next(line for line in result.out.splitlines() if "s0-loss1.0845" in line)
    assert "1.0845" in row.replace("s0-loss1.0845", "")  # not the 4 digits 1.084
    assert "123456.789" in result.out
    assert invoke("ls", tmp_path / "r", "--json").json()["checkpoints"][0]["metrics"] == {"loss": 1.0845}
