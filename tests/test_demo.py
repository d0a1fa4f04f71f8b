"""``modelsafe demo``: trains, is killed mid-save, resumes, lists and exports — and says so."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import modelsafe as ms

torch = pytest.importorskip("torch")


def run_demo(directory, *, without_safetensors=False):
    """``modelsafe demo DIR`` in a new process; optionally as after ``pip install modelsafe[torch]``,
    where safetensors is not installed."""
    block = "import sys; sys.modules['safetensors'] = None\n" if without_safetensors else ""
    code = f"{block}from modelsafe.cli import main\nmain(['demo', {str(directory)!r}])\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=290,
                          env=dict(os.environ, COLUMNS="200"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def _a_previous_demo(directory) -> None:
    """What an earlier demo leaves in ``directory``: its marker, a run that has reached the last epoch
    (a new demo that resumed from it would train nothing and never be killed) and an export."""
    from modelsafe.cli.demo import EPOCHS, EXPORT, RUN, prepare_directory

    assert prepare_directory(str(directory)) == (str(directory), "given")
    ck = ms.Checkpoints(directory / RUN, monitor="val_loss")
    ck.save({"epoch": EPOCHS - 1}, step=EPOCHS - 1, metrics={"val_loss": 0.0})
    ck.close()
    ms.save({"w": torch.zeros(1)}, directory / EXPORT)


@pytest.mark.timeout(600)
def test_demo_runs_the_main_job_again_in_a_previous_demos_directory_without_safetensors(tmp_path):
    """One run of the whole demo (two interpreters) proves both: an earlier demo's run is replaced, and
    the demo needs only torch (safetensors blocked); the safetensors message is checked on its export below."""
    _a_previous_demo(tmp_path)
    out = run_demo(tmp_path, without_safetensors=True)
    assert "the previous demo's run was removed" in out
    assert "any safetensors reader opens it" in out
    assert f"its files are in {tmp_path}" in out
    assert "training process ended with SIGKILL" in out
    assert "resumed from epoch005-val_loss" in out
    assert "leftovers of the killed save after resuming: none" in out
    assert "demo finished" in out
    # the run on disk: keep_last=2 plus keep_best=2, no leftovers, the best exported
    ck = ms.Checkpoints(tmp_path / "run", monitor="val_loss")
    infos = ck.list()
    assert 2 <= len(infos) <= 4 and infos[-1].step == 11
    assert not [n for n in os.listdir(tmp_path / "run") if n.startswith(".") and "modelsafe-" in n and "tmp" in n]
    best = ck.best()
    assert f"exported {best.name}" in out
    with pytest.raises(ms.UnknownClassError, match="modelsafe.demo.Regressor"):
        ms.load(tmp_path / "best-model.safetensors")  # nothing runs unless the class is registered
    from modelsafe.cli.demo import _define_model

    _define_model(torch)  # what `import` of the user's model module does
    model = ms.load(tmp_path / "best-model.safetensors")
    assert type(model).__name__ == "Regressor"
    with ms.open(tmp_path / "best-model.safetensors") as r:
        assert r.metadata["exported_from"]["checkpoint"] == best.name


def test_with_safetensors_the_demo_shows_it_reading_the_export(tmp_path):
    import io

    from rich.console import Console

    from modelsafe.cli.demo import _show_safetensors_keys

    pytest.importorskip("safetensors")
    path = tmp_path / "best-model.safetensors"
    ms.save({"head.weight": torch.ones(1, 2), "body.0.bias": torch.zeros(2)}, path)
    console = Console(file=io.StringIO(), width=200)
    _show_safetensors_keys(console, str(path))
    assert "safetensors.safe_open reads it too: ['body.0.bias', 'head.weight']" in console.file.getvalue()


def test_demo_without_torch_says_how_to_install_it(tmp_path):
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from modelsafe.cli import main\n"
        f"main(['demo', {str(tmp_path)!r}])\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert "torch is not installed" in proc.stderr and "pip install 'modelsafe[torch]'" in proc.stderr


def test_demo_leaves_a_directory_it_did_not_make_alone(tmp_path):
    from modelsafe.cli.demo import prepare_directory

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "mine.txt").write_text("user data")
    with pytest.raises(ms.RunConflictError, match="not made by modelsafe demo"):
        prepare_directory(str(tmp_path))
    assert (tmp_path / "run" / "mine.txt").read_text() == "user data"


def test_demo_without_a_directory_makes_a_new_temporary_one_and_says_so():
    from modelsafe.cli.demo import prepare_directory

    directory, origin = prepare_directory(None)
    try:
        assert os.path.isdir(directory) and not os.listdir(directory) and "temporary" in origin
    finally:
        os.rmdir(directory)
