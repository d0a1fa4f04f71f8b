"""``modelsafe demo``: the main job on a fresh machine, end to end.

1. train a small network on synthetic data with ``ms.Checkpoints`` (keep the last 2 and
   the best 2 by validation loss, names like ``epoch007-val_loss0.0421``, async saves);
2. the training process is killed (SIGKILL) while a checkpoint is being written;
3. a new process resumes from the latest committed checkpoint (model, optimizer,
   scheduler and epoch) and finishes the run;
4. the run's checkpoints are listed, the best one is exported as one safetensors file
   with its recipe, loaded back as a working model and evaluated.

``python -m modelsafe.cli.demo train DIR --epochs N --crash-at K`` is the training
process the demo starts and kills.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

import modelsafe as ms

EPOCHS = 12
CRASH_AT = 6
RUN = "run"
KEEP_LAST, KEEP_BEST = 2, 2
NAME = "epoch{step:03d}-val_loss{val_loss:.4f}"
EXPORT = "best-model.safetensors"
DEMO_MARKER = ".modelsafe-demo"   # a directory the demo made: a later demo there replaces its run


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise ms.FrameworkNotInstalledError(
            "modelsafe demo trains a small PyTorch model, and torch is not installed; "
            "install it with: pip install 'modelsafe[torch]'"
        ) from None
    return torch


def _define_model(torch: Any) -> type:
    @ms.rebuildable(name="modelsafe.demo.Regressor")
    class Regressor(torch.nn.Module):
        """A two-layer MLP; its constructor arguments are saved as its recipe."""

        def __init__(self, inputs: int, hidden: int) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(
                torch.nn.Linear(inputs, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden), torch.nn.GELU()
            )
            self.head = torch.nn.Linear(hidden, 1)

        def forward(self, x: Any) -> Any:
            return self.head(self.body(x)).squeeze(-1)

    return Regressor


def synthetic_data(torch: Any) -> tuple:
    """A small, noisy regression task (it overfits: validation loss bottoms out early)."""
    g = torch.Generator().manual_seed(1234)
    x = torch.randn(640, 16, generator=g)
    w = torch.randn(16, 8, generator=g) / 4
    y = torch.sin(x @ w).sum(-1) + 0.3 * torch.randn(640, generator=g)
    return (x[:128], y[:128]), (x[128:], y[128:])


def new_training_state(torch: Any) -> dict:
    torch.manual_seed(0)
    model = _define_model(torch)(16, 256)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=8, gamma=0.5)
    return {"model": model, "optimizer": optimizer, "scheduler": scheduler, "epoch": -1}


def open_run(directory: str) -> ms.Checkpoints:
    return ms.Checkpoints(os.path.join(directory, RUN), keep_last=KEEP_LAST, keep_best=KEEP_BEST,
                          monitor="val_loss", mode="min", name=NAME, async_save=True)


def evaluate(torch: Any, model: Any, data: tuple) -> float:
    x, y = data
    with torch.no_grad():
        return float(torch.nn.functional.mse_loss(model(x), y))


def train_epoch(torch: Any, state: dict, train: tuple, epoch: int) -> float:
    model, optimizer = state["model"], state["optimizer"]
    x, y = train
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))  # resumable shuffling
    total = 0.0
    for batch in order.split(64):
        loss = torch.nn.functional.mse_loss(model(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += float(loss.detach()) * len(batch)
    state["scheduler"].step()
    return total / len(x)


def train(directory: str, epochs: int, crash_at: int | None, say: Any = print) -> ms.Checkpoints:
    """Train (or resume) the run in ``directory``; SIGKILL ourselves mid-save at ``crash_at``."""
    torch = _torch()
    state = new_training_state(torch)
    train_data, val_data = synthetic_data(torch)
    ck = open_run(directory)
    resumed = ck.load_into(state)
    start = resumed.step + 1 if resumed else 0
    if resumed:
        say(f"resumed from {resumed.name} (epoch {resumed.step}): model, optimizer, scheduler and epoch restored")
    for epoch in range(start, epochs):
        train_loss = train_epoch(torch, state, train_data, epoch)
        val_loss = evaluate(torch, state["model"], val_data)
        state["epoch"] = epoch
        pending = ck.save(state, step=epoch, metrics={"val_loss": val_loss, "train_loss": train_loss})
        say(f"epoch {epoch:2d}  train_loss {train_loss:.4f}  val_loss {val_loss:.4f}  -> saving {pending.name}")
        if epoch == crash_at:
            say(f"*** killing the training process (SIGKILL) while {pending.name} is being written ***")
            sys.stdout.flush()
            _die()
    ck.wait()
    return ck


def _die() -> None:
    if hasattr(signal, "SIGKILL"):
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(137)  # pragma: no cover - platforms without SIGKILL


def prepare_directory(directory: str | None) -> tuple[str, str]:
    """The demo's directory, and what to say about it: a new temporary one by default; a
    directory a previous demo used is started afresh; anything else in the way is left alone."""
    if directory is None:
        return tempfile.mkdtemp(prefix="modelsafe-demo-"), "a new temporary directory"
    os.makedirs(directory, exist_ok=True)
    marker = os.path.join(directory, DEMO_MARKER)
    products = [os.path.join(directory, name) for name in (RUN, EXPORT)]
    if os.path.exists(marker):
        for path in products:
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.lexists(path):
                os.remove(path)
        return directory, "the previous demo's run was removed"
    in_the_way = [p for p in products if os.path.lexists(p)]
    if in_the_way:
        raise ms.RunConflictError(
            f"{in_the_way[0]}: already exists and was not made by modelsafe demo; give the demo another directory",
            path=in_the_way[0],
        )
    with open(marker, "w") as f:
        f.write("made by `modelsafe demo`; running the demo again here replaces its run\n")
    return directory, "given"


def run_demo(directory: str | None) -> None:
    from rich.console import Console

    from .. import retention
    from .runs import checkpoint_table

    console = Console()
    started = time.perf_counter()
    torch = _torch()
    directory, origin = prepare_directory(directory)
    run_dir = os.path.join(directory, RUN)
    console.print(f"[bold]modelsafe demo[/bold]: a training run with checkpoints in {directory} ({origin})")
    console.print(f"  ms.Checkpoints({RUN!r}, keep_last={KEEP_LAST}, keep_best={KEEP_BEST}, monitor='val_loss', "
                  f"name={NAME!r}, async_save=True)")

    console.rule("1. train; the process is killed in the middle of a save")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "modelsafe.cli.demo", "train", directory, "--epochs", str(EPOCHS), "--crash-at", str(CRASH_AT)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=300,
    )
    console.print(proc.stdout.rstrip(), markup=False, highlight=False)
    killed = proc.returncode in (-9, 137)
    console.print(f"training process ended with {'SIGKILL' if killed else f'exit code {proc.returncode}'}")
    if not killed:
        raise SystemExit("demo: the training process was expected to be killed")
    leftovers = [n for n in os.listdir(run_dir) if ".modelsafe-tmp-" in n]
    committed = ms.Checkpoints(run_dir).list()
    console.print(f"committed checkpoints on disk: {', '.join(i.name for i in committed)}")
    if leftovers:
        console.print(f"the interrupted save left {leftovers[0]} (hidden and never loaded; the next writer removes it)")
    else:
        console.print("the interrupted save had not created its staging directory yet: nothing half-written exists")

    console.rule("2. resume from the latest committed checkpoint and finish")
    ck = train(directory, EPOCHS, None, say=lambda text: console.print(text, highlight=False))
    remaining = [n for n in os.listdir(run_dir) if ".modelsafe-tmp-" in n]
    console.print(f"leftovers of the killed save after resuming: {remaining or 'none'}; epoch {CRASH_AT} "
                  "reproduces the killed run's losses exactly (model, optimizer, scheduler and data order resumed)")

    console.rule("3. the run")
    infos = ck.list()
    best = ck.best()
    ranked = retention.rank_best([i.candidate for i in infos], "val_loss", "min")
    checkpoint_table(infos, best=ranked[0].name if ranked else None, latest=infos[-1].name,
                     title=f"{run_dir}  (keep_last={KEEP_LAST}, keep_best={KEEP_BEST} by val_loss)").render()

    console.rule("4. export the best checkpoint for inference")
    exported = os.path.join(directory, EXPORT)
    ck.export(exported, which="best")
    model = ms.load(exported)  # rebuilt from its recipe: no class code needed beyond the registration
    _, val_data = synthetic_data(torch)
    val_loss = evaluate(torch, model, val_data)
    console.print(f"exported {best.name} -> {exported} ({os.path.getsize(exported):,} bytes)")
    console.print(f"ms.load(...) gives a working {type(model).__name__}; its val_loss {val_loss:.4f} "
                  f"matches the checkpoint's {best.metrics['val_loss']:.4f}")
    _show_safetensors_keys(console, exported)
    ck.close()
    if abs(val_loss - best.metrics["val_loss"]) > 1e-5:
        raise SystemExit("demo: the exported model does not reproduce the best checkpoint's validation loss")
    console.print(f"[bold green]demo finished in {time.perf_counter() - started:.1f} s[/bold green]")
    console.print(f"its files are in {directory} (inspect them: modelsafe ls {run_dir}; "
                  f"modelsafe show {exported}; delete the directory when done)", highlight=False)


def _show_safetensors_keys(console: Any, exported: str) -> None:
    """Show that plain safetensors reads the export, when safetensors is installed (the demo needs only torch)."""
    try:
        from safetensors import safe_open
    except ImportError:
        console.print("it is a plain safetensors file too: any safetensors reader opens it (pip install safetensors)")
        return
    with safe_open(exported, "pt") as f:
        console.print(f"safetensors.safe_open reads it too: {sorted(f.keys())}")


def _main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m modelsafe.cli.demo")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train (or resume) the demo run")
    p.add_argument("directory")
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--crash-at", type=int, default=None)
    args = parser.parse_args(argv)
    train(args.directory, args.epochs, args.crash_at)


if __name__ == "__main__":
    _main(sys.argv[1:])
