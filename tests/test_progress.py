"""progress=True draws a bar of bytes on stderr and changes nothing else; progress=False prints nothing."""

from __future__ import annotations

import numpy as np
import pytest

import modelsafe as ms
from modelsafe.convert import convert
from modelsafe.progress import progress_bar


def _state():
    return {"w": np.arange(300_000, dtype=np.float32), "b": np.ones(7, np.int64), "epoch": 3}


@pytest.fixture
def terminal(monkeypatch):
    """stderr counts as a terminal for rich, as it does in a shell."""
    monkeypatch.setenv("TTY_COMPATIBLE", "1")


def test_save_with_progress_writes_the_same_bytes_and_shows_a_bar(tmp_path, capsys, terminal):
    ms.save(_state(), tmp_path / "quiet.safetensors")
    assert capsys.readouterr().err == ""
    ms.save(_state(), tmp_path / "shown.safetensors", progress=True)
    err = capsys.readouterr().err
    assert "saving shown.safetensors" in err and "1.2 MB" in err
    quiet, shown = (tmp_path / "quiet.safetensors").read_bytes(), (tmp_path / "shown.safetensors").read_bytes()
    # the header holds random checksum placeholders only while writing; the files are equal
    assert quiet == shown


def test_load_with_progress(tmp_path, capsys, terminal):
    ms.save(_state(), tmp_path / "s.safetensors")
    back = ms.load(tmp_path / "s.safetensors", progress=True)
    assert "loading s.safetensors" in capsys.readouterr().err
    assert np.array_equal(back["w"], _state()["w"])
    ms.load(tmp_path / "s.safetensors")
    assert capsys.readouterr().err == ""


def test_checkpoints_save_load_and_export_with_progress(tmp_path, capsys, terminal):
    ck = ms.Checkpoints(tmp_path / "run")
    ck.save(_state(), step=0)
    assert capsys.readouterr().err == ""
    ck.save(_state(), step=1, progress=True)
    assert "saving step1" in capsys.readouterr().err
    assert ck.load(1, progress=True)["epoch"] == 3
    assert "loading" in capsys.readouterr().err
    ck.export(tmp_path / "m.safetensors", which=1, progress=True)
    assert "exporting m.safetensors" in capsys.readouterr().err
    ck.fork(tmp_path / "other", which=1, progress=True).close()
    assert "forking step1" in capsys.readouterr().err
    assert np.array_equal(ms.load(tmp_path / "other")["w"], _state()["w"])
    ck.close()


def test_the_cli_bar_is_the_library_bar(capsys, terminal, monkeypatch):
    from modelsafe.cli import output

    monkeypatch.setattr(output, "stderr_is_terminal", lambda: True)
    with output.progress(10, "items") as bar:
        bar.describe("counting items")
        for _ in range(10):
            bar.advance(1)
    assert "10/10" in capsys.readouterr().err


@pytest.mark.parametrize("to", ["modelsafe", "safetensors"])
def test_convert_with_progress_gives_the_same_file(tmp_path, capsys, terminal, to):
    np.savez(tmp_path / "w.npz", w=np.arange(300_000, dtype=np.float32))
    convert(tmp_path / "w.npz", tmp_path / "a.safetensors", to=to)
    assert capsys.readouterr().err == ""
    convert(tmp_path / "w.npz", tmp_path / "b.safetensors", to=to, progress=True)
    assert "1.2 MB" in capsys.readouterr().err
    a, b = ms.load(tmp_path / "a.safetensors"), ms.load(tmp_path / "b.safetensors")
    assert np.array_equal(a["w"], b["w"])
    if to == "safetensors":
        assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()


def test_the_bar_counts_every_byte(capsys, terminal):
    with progress_bar(True, "counting", 3 << 20) as on_bytes:
        for _ in range(3 * 1024):
            on_bytes(1024)  # gathered a megabyte at a time
    assert "3.1/3.1 MB" in capsys.readouterr().err


def test_progress_must_be_a_bool(tmp_path):
    with pytest.raises(ms.InvalidArgumentError, match="progress must be True or False"):
        ms.save({"w": np.ones(1)}, tmp_path / "x", progress="yes")


def test_an_async_save_shows_its_bar_while_writing_in_the_background(tmp_path, capsys, terminal):
    with ms.Checkpoints(tmp_path / "run", async_save=True) as ck:
        ck.save(_state(), step=0, progress=True).result()
        assert ck.load(0)["epoch"] == 3
    assert "saving step0" in capsys.readouterr().err
