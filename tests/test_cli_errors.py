"""The error -> message -> exit code layer and the output helpers (cli.errors, cli.output)."""

from __future__ import annotations

import json

import click
import numpy as np
import pytest

import modelsafe as ms
from modelsafe.cli import main, output
from modelsafe.cli.errors import (
    EXIT_PROBLEM,
    EXIT_USAGE,
    CommandError,
    ModelsafeGroup,
    ProblemFound,
    register_error,
    translate,
)
from modelsafe.cli.output import Column, TableSpec, format_number, human_bytes, jsonable

from cli_support import invoke, run_process


def test_translate_modelsafe_errors_keep_kind_path_and_key():
    err = translate(ms.CorruptCheckpointError("f: bad", path="f", key="w"))
    assert isinstance(err, CommandError) and err.exit_code == EXIT_PROBLEM
    assert err.as_dict() == {"error": "CorruptCheckpointError", "message": "f: bad", "path": "f", "key": "w", "exit_code": 1}
    assert translate(ms.CheckpointNotFoundError("gone", path="p")).kind == "CheckpointNotFoundError"


def test_invalid_arguments_are_usage_errors_and_broken_files_problems():
    err = translate(ms.InvalidArgumentError("keep_last must be >= 0, not -1", key="keep_last"))
    assert err.exit_code == EXIT_USAGE == 2
    assert err.as_dict() == {"error": "InvalidArgumentError", "message": "keep_last must be >= 0, not -1", "path": None,
                             "key": "keep_last", "exit_code": 2}
    # a subclass of another error keeps the most specific mapping; errors about files stay 1
    assert translate(ms.CorruptCheckpointError("f: bad", path="f")).exit_code == EXIT_PROBLEM
    assert translate(ms.CheckpointNotFoundError("gone", path="p")).exit_code == EXIT_PROBLEM
    assert translate(ms.ModelsafeError("other")).exit_code == EXIT_PROBLEM


def test_a_refused_command_line_value_exits_2_and_a_broken_file_1(tmp_path):
    from cli_support import make_run, run_process

    make_run(tmp_path / "run", [0.5, 0.4])
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    # the library refuses a fork onto its own source (InvalidArgumentError): exit 2 in both output modes
    result = invoke("fork", tmp_path / "run", tmp_path / "run")
    assert result.code == 2 and "different destination" in result.err, result.err
    result = run_process("fork", tmp_path / "run", tmp_path / "run", "--json")
    assert result.code == 2 and result.out == ""
    assert json.loads(result.err)["error"] == "InvalidArgumentError" and json.loads(result.err)["exit_code"] == 2
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")
    assert invoke("show", broken).code == 1
    assert invoke("show", tmp_path / "absent.safetensors").code == 1


def test_translate_os_errors_and_unknown_exceptions():
    err = translate(PermissionError(13, "Permission denied", "/x/y"))
    assert err.message == "/x/y: Permission denied" and err.exit_code == 1
    assert translate(ZeroDivisionError()) is None  # a bug: the traceback is kept


def test_most_specific_registration_wins():
    class Special(ms.StorageError):
        pass

    register_error(Special, lambda exc: CommandError("special!", exit_code=3))
    assert translate(Special("x")).exit_code == 3
    assert translate(ms.StorageError("y")).exit_code == 1


def _group_with(fn) -> click.Group:
    @click.group(cls=ModelsafeGroup)
    def group() -> None:
        pass

    @group.command("go")
    @output.json_option
    def go(as_json: bool) -> None:
        fn()

    return group


def _raise(exc: BaseException):
    def fn() -> None:
        raise exc
    return fn


def test_main_exit_codes(capsys, tmp_path):
    with pytest.raises(SystemExit) as excinfo:
        main(["show", str(tmp_path / "absent.safetensors")])
    assert excinfo.value.code == EXIT_PROBLEM
    assert "error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as excinfo:
        main(["no-such-command"])
    assert excinfo.value.code == EXIT_USAGE
    with pytest.raises(SystemExit) as excinfo:
        main(["--version"])
    assert excinfo.value.code == 0
    assert ms.__version__ in capsys.readouterr().out


def test_group_maps_library_errors_and_json_mode():
    from click.testing import CliRunner

    group = _group_with(_raise(ms.CorruptCheckpointError("m.safetensors: tensor 'w' is bad", path="m.safetensors", key="w")))
    result = CliRunner().invoke(group, ["go"])
    assert result.exit_code == 1 and result.stderr == "error: m.safetensors: tensor 'w' is bad\n"
    result = CliRunner().invoke(group, ["go", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.stderr) == {
        "error": "CorruptCheckpointError", "message": "m.safetensors: tensor 'w' is bad", "path": "m.safetensors",
        "key": "w", "exit_code": 1,
    }
    assert result.stdout == ""
    result = CliRunner().invoke(_group_with(_raise(ProblemFound("2 corrupt"))), ["go"])
    assert result.exit_code == 1 and "2 corrupt" in result.stderr


def test_unexpected_exceptions_are_not_swallowed():
    from click.testing import CliRunner

    result = CliRunner().invoke(_group_with(_raise(ZeroDivisionError("bug"))), ["go"])
    assert isinstance(result.exception, ZeroDivisionError)


def test_json_errors_in_a_subprocess(tmp_path):
    result = run_process("show", tmp_path / "absent.safetensors", "--json")
    assert result.code == 1 and result.out == ""
    error = json.loads(result.err)
    assert error["error"] == "CheckpointNotFoundError" and "absent.safetensors" in error["message"]


def test_python_dash_m_and_console_script_are_the_same_command(tmp_path):
    import os
    import shutil
    import subprocess
    import sys

    path = tmp_path / "m.safetensors"
    ms.save({"w": np.ones(2, np.float32)}, path)
    via_module = run_process("show", path, "--json")
    script = shutil.which("modelsafe", path=os.path.dirname(sys.executable))
    assert script is not None
    proc = subprocess.run([script, "show", str(path), "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == via_module.code == 0
    assert json.loads(proc.stdout) == via_module.json()


def test_help_lists_every_command():
    result = invoke("--help")
    assert result.code == 0
    for name in ("ls", "show", "diff", "verify", "prune", "plot", "fork", "export"):
        assert f"  {name} " in result.out


# -- output helpers ---------------------------------------------------------------------

def test_human_bytes_and_numbers():
    assert [human_bytes(n) for n in (0, 1023, 1536, 3 << 30)] == ["0 B", "1023 B", "1.5 KiB", "3.0 GiB"]
    assert [format_number(v) for v in (0.421, 12, 1e-9, float("nan"), 0.0)] == ["0.421", "12", "1e-09", "nan", "0"]


def test_jsonable_replaces_non_finite_floats():
    assert jsonable({"a": float("inf"), "b": (1, float("nan")), 3: b"xy"}) == {"a": "inf", "b": [1, "nan"], "3": "<2 bytes>"}
    assert jsonable(np.float32(0.5)) == 0.5


def test_plain_table_aligns_columns():
    table = TableSpec([Column("name"), Column("bytes", "right")], title="t")
    table.add("weight", "1,024")
    table.add("b", 8)
    table.footer = ("2", "1,032")
    assert table.plain().splitlines() == ["t", "name    bytes", "weight  1,024", "b           8", "2       1,032"]


def test_long_tables_use_the_fast_renderer(capsys):
    table = TableSpec([Column("name"), Column("n", "right")])
    table.extend((f"t{i}", str(i)) for i in range(output.RICH_ROW_LIMIT + 1))
    table.render()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["name", "n"] and len(lines) == output.RICH_ROW_LIMIT + 2


def test_progress_only_on_a_terminal(monkeypatch):
    from modelsafe.progress import Meter

    monkeypatch.setattr(output, "stderr_is_terminal", lambda: False)
    with output.progress(100, "x") as bar:
        assert isinstance(bar, output._NoProgress)
        bar.advance(10)
    monkeypatch.setattr(output, "stderr_is_terminal", lambda: True)
    with output.progress(100, "x") as bar:
        assert isinstance(bar, Meter)
        bar.advance(100)
    with output.progress(0, "nothing to do") as bar:
        assert isinstance(bar, output._NoProgress)


def test_no_progress_bar_in_captured_output(tmp_path):
    path = tmp_path / "m.safetensors"
    ms.save({"w": np.ones(1000, np.float32)}, path)
    result = invoke("verify", path)
    assert result.err == "" and "━" not in result.out


# -- the CLI speaks CLI flags; its help says one thing, in plain text ---------------------------

from modelsafe.cli.app import COMMANDS  # noqa: E402

LIBRARY_KEYWORDS = ("overwrite=", "allow_pickle=", "strict=", "which=", "key=", "monitor=", "keep_best=", "keep_last=")


@pytest.mark.parametrize("command", sorted(COMMANDS) + ["demo", None])
def test_every_help_is_plain_text_without_library_keywords(command):
    result = invoke(*([command] if command else []), "--help")
    assert result.code == 0, result.err
    text = result.out
    assert "``" not in text and ":func:" not in text and ":class:" not in text, text   # no RST markup
    for keyword in LIBRARY_KEYWORDS:
        assert keyword not in text, f"{command} --help mentions {keyword}: {text}"
    assert "when absent" not in text or "[default" not in text, text   # a default that contradicts itself


def test_export_help_says_what_the_key_default_does():
    text = invoke("export", "--help").out
    assert "[default: model]" not in text and "--key NAME" in text and "'model' entry" in text


def test_convert_onto_an_existing_file_names_the_flag_not_the_keyword(tmp_path):
    src, dst = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    ms.save({"w": np.ones(2)}, src)
    dst.write_bytes(b"keep me")
    result = invoke("convert", src, dst)
    assert result.code == 1
    assert "pass --force" in result.err and "overwrite=" not in result.err
    assert dst.read_bytes() == b"keep me"
    assert invoke("convert", src, dst, "--force").code == 0


def test_library_convert_onto_an_existing_file_names_the_keyword_not_the_flag(tmp_path):
    from modelsafe.convert import convert

    src, dst = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    ms.save({"w": np.ones(2)}, src)
    dst.write_bytes(b"keep me")
    with pytest.raises(ms.StorageError) as info:
        convert(src, dst)
    assert "overwrite=True" in str(info.value) and "--force" not in str(info.value)


def test_export_of_a_key_the_state_lacks_is_an_error_naming_the_entries(tmp_path):
    from cli_support import make_run

    make_run(tmp_path / "run", [0.5, 0.4])
    result = invoke("export", tmp_path / "run", tmp_path / "out.safetensors", "--key", "modle")
    assert result.code == 2 and "no entry 'modle'" in result.err and "'model'" in result.err, result.err
    assert not (tmp_path / "out.safetensors").exists()
    assert invoke("export", tmp_path / "run", tmp_path / "out.safetensors", "--key", "model").code == 0
    assert set(ms.load(tmp_path / "out.safetensors")) == {"w", "b"}


def test_prune_with_a_misspelled_monitor_deletes_nothing_and_names_the_recorded_metrics(tmp_path):
    from cli_support import make_run

    make_run(tmp_path / "run", [0.1, 0.5, 0.4, 0.3])
    before = sorted(p.name for p in (tmp_path / "run").iterdir())
    result = invoke("prune", tmp_path / "run", "--keep-best", "1", "--monitor", "val_los")
    assert result.code == 2, result.out + result.err
    assert "--monitor val_los" in result.err and "val_loss" in result.err
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
