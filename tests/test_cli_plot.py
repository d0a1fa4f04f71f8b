"""``modelsafe plot``: metrics over steps into a real PNG (modelsafe.cli.plot)."""

from __future__ import annotations

import struct
import zlib

import pytest

from modelsafe.cli.plot import collect

from cli_support import invoke, make_run, run_process

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk, checking the signature and the chunk CRC."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    body = data[16 : 16 + length]
    (crc,) = struct.unpack(">I", data[16 + length : 20 + length])
    assert crc == zlib.crc32(kind + body)
    assert data.endswith(b"IEND\xaeB`\x82")
    return struct.unpack(">II", body[:8])


@pytest.fixture
def runs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    make_run(a, [0.9, 0.5, 0.3, 0.25])
    make_run(b, [0.8, 0.6])
    return a, b


def test_collect_reads_steps_and_values(runs):
    series, seen = collect(str(runs[0]), "val_loss")
    assert series.steps == [0, 1, 2, 3] and series.values == [0.9, 0.5, 0.3, 0.25]
    assert seen == {"val_loss", "acc"}


def test_one_run_writes_a_png_of_the_expected_size(runs, tmp_path):
    out = tmp_path / "curve.png"
    result = invoke("plot", runs[0], "--metric", "val_loss", "-o", out)
    assert result.code == 0, result.err
    assert png_size(out) == (800, 400)  # 8 x (3.2 + 0.8) inches at 100 dpi
    assert out.stat().st_size > 5_000
    assert "1 line(s), 4 point(s)" in result.out


def test_several_runs_and_metrics(runs, tmp_path):
    out = tmp_path / "both.png"
    result = invoke("plot", *runs, "-m", "val_loss", "-m", "acc", "-o", out, "--dpi", "50", "--json")
    assert result.code == 0, result.err
    document = result.json()
    assert [(s["metric"], len(s["steps"])) for s in document["series"]] == [("val_loss", 4), ("acc", 4), ("val_loss", 2), ("acc", 2)]
    assert png_size(out) == (400, 360)  # 8 x (2 x 3.2 + 0.8) inches at 50 dpi
    assert document["bytes"] == out.stat().st_size


def test_missing_metric_names_what_the_run_has(runs, tmp_path):
    result = invoke("plot", runs[0], "--metric", "bleu", "-o", tmp_path / "x.png")
    assert result.code == 1
    assert "bleu" in result.err and "acc, val_loss" in result.err
    assert not (tmp_path / "x.png").exists()


def test_usage_errors(runs, tmp_path):
    assert invoke("plot", runs[0], "-o", tmp_path / "x.png").code == 2  # no --metric
    assert invoke("plot", runs[0], "--metric", "val_loss").code == 2  # no -o
    assert invoke("plot", f"{runs[0]}@best", "--metric", "val_loss", "-o", tmp_path / "x.png").code == 2


def test_subprocess(runs, tmp_path):
    out = tmp_path / "sub.png"
    result = run_process("plot", *runs, "--metric", "val_loss", "-o", out, "--log-y", "--title", "loss")
    assert result.code == 0, result.err
    assert png_size(out) == (800, 400)


def test_without_matplotlib_the_error_says_how_to_install(runs, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    result = invoke("plot", runs[0], "--metric", "val_loss", "-o", tmp_path / "x.png")
    assert result.code == 1
    assert "pip install 'modelsafe[plot]'" in result.err
