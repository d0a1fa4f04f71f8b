"""RUN@best / RUN@latest / RUN@<step> / RUN@<name> addressing (modelsafe.cli.address)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import modelsafe as ms
from modelsafe.cli.address import parse_address, resolve, resolve_run
from modelsafe.cli.errors import UsageProblem

from cli_support import invoke, make_run, run_process


@pytest.fixture
def run(tmp_path):
    path = tmp_path / "exp1"
    make_run(path, [0.9, 0.4, 0.6, 0.7])  # best: step 1; latest: step 3
    return path


def test_parse_plain_path_and_selectors(tmp_path):
    assert parse_address("model.safetensors").selector is None
    a = parse_address("runs/exp1@best")
    assert (a.path, a.selector, a.step) == ("runs/exp1", "best", None)
    assert parse_address("runs/exp1@12").step == 12
    assert parse_address("runs/exp1@step012").step is None


def test_existing_path_with_at_sign_is_literal(tmp_path):
    weird = tmp_path / "model@best.safetensors"
    ms.save({"w": np.ones(2)}, weird)
    address = parse_address(str(weird))
    assert address.selector is None and address.path == str(weird)
    assert invoke("show", weird).code == 0


def test_run_directory_with_at_sign_in_its_name(tmp_path):
    path = tmp_path / "user@host-run"
    make_run(path, [0.5, 0.2])
    address = parse_address(f"{path}@latest")
    assert address.path == str(path) and address.selector == "latest"
    assert resolve(f"{path}@best").info.step == 1


def test_empty_selector_is_a_usage_error(run):
    with pytest.raises(UsageProblem):
        parse_address(f"{run}@")
    result = invoke("show", f"{run}@")
    assert result.code == 2
    assert "nothing after '@'" in result.err


@pytest.mark.parametrize("selector, step", [("best", 1), ("latest", 3), ("2", 2), ("step000", 0)])
def test_selectors_resolve_to_the_right_checkpoint(run, selector, step):
    resolved = resolve(f"{run}@{selector}")
    assert resolved.info.step == step
    assert resolved.path == os.path.join(str(run), f"step{step:03d}")
    with ms.open(resolved.path) as reader:
        assert float(reader.get("model.w", framework="numpy")[0, 0]) == step


def test_run_without_selector_means_latest_like_ms_load(run):
    assert resolve(str(run)).info.step == 3


def test_unknown_step_or_name_names_the_run_and_what_it_has(run):
    with pytest.raises(ms.CheckpointNotFoundError) as excinfo:
        resolve(f"{run}@99")
    message = str(excinfo.value)
    assert str(run) in message and "checkpoint 99" in message and "step003" in message
    result = invoke("show", f"{run}@nope")
    assert result.code == 1
    assert "no committed checkpoint 'nope'" in result.err


def test_best_needs_a_monitored_metric(tmp_path):
    path = tmp_path / "plain"
    make_run(path, [0.3, 0.2], monitor=None)
    with pytest.raises(ms.CheckpointNotFoundError, match="no monitored metric"):
        resolve(f"{path}@best")
    assert resolve(f"{path}@1").info.step == 1


def test_missing_run_is_not_found(tmp_path):
    with pytest.raises(ms.CheckpointNotFoundError):
        resolve(f"{tmp_path / 'absent'}@best")
    with pytest.raises(ms.CheckpointNotFoundError):
        resolve_run(str(tmp_path / "absent"))


def test_whole_run_commands_refuse_a_selector(run):
    with pytest.raises(UsageProblem, match="whole run"):
        resolve_run(f"{run}@best")
    assert invoke("ls", f"{run}@best").code == 2


def test_addresses_work_in_a_subprocess(run):
    result = run_process("show", f"{run}@best", "--json")
    assert result.code == 0, result.err
    document = result.json()
    assert document["checkpoint"]["step"] == 1
    assert document["address"] == f"{run}@best"


def test_selector_on_a_file_is_a_usage_error(tmp_path):
    path = tmp_path / "model.safetensors"
    ms.save({"w": np.ones(2)}, path)
    result = invoke("show", f"{path}@best")
    assert result.code == 2 and "is a file, not a run" in result.err
