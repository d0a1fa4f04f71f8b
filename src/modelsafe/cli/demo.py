"""``modelsafe demo``: the everyday scenarios, end to end, on a fresh machine."""

from __future__ import annotations

import os
import tempfile
import time

from rich.console import Console
from rich.table import Table

import modelsafe as ms


def run_demo(directory: str | None) -> None:
    console = Console()
    directory = directory or tempfile.mkdtemp(prefix="modelsafe-demo-")
    os.makedirs(directory, exist_ok=True)
    console.print(f"[bold]modelsafe demo[/bold] in {directory}")
    try:
        import torch
    except ImportError:  # the tour works with numpy alone
        torch = None
    import numpy as np

    if torch is not None:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        tensor = torch.randn(4, 4)
        state_dict = model.state_dict()
    else:
        rng = np.random.default_rng(0)
        tensor = rng.standard_normal((4, 4), dtype=np.float32)
        state_dict = {"0.weight": rng.standard_normal((16, 8), dtype=np.float32), "0.bias": np.zeros(16, np.float32)}
    scenarios = [
        ("one tensor", "tensor.safetensors", tensor),
        ("a list", "list.safetensors", [tensor, tensor * 2]),
        ("a dict", "dict.safetensors", {"x": tensor, "y": tensor + 1, "note": "hello"}),
        ("a state_dict", "model.safetensors", state_dict),
        ("a checkpoint dict", "checkpoint.safetensors", {"model": state_dict, "epoch": 5, "loss": 0.3127, "steps": (100, 200)}),
    ]
    table = Table(title="save -> load round trips")
    for column in ("scenario", "file", "bytes", "save ms", "load ms", "equal"):
        table.add_column(column)
    for label, name, obj in scenarios:
        path = os.path.join(directory, name)
        t0 = time.perf_counter()
        ms.save(obj, path, metadata={"scenario": label})
        t1 = time.perf_counter()
        back = ms.load(path)
        t2 = time.perf_counter()
        table.add_row(label, name, f"{os.path.getsize(path):,}", f"{(t1 - t0) * 1e3:.1f}", f"{(t2 - t1) * 1e3:.1f}", str(_equal(obj, back)))
    console.print(table)

    path = os.path.join(directory, "model.safetensors")
    with ms.open(path) as reader:
        console.print(f"ms.open(\"model.safetensors\").keys() -> {reader.keys()}")
    broken = os.path.join(directory, "corrupted.safetensors")
    data = bytearray(open(path, "rb").read())
    data[-3] ^= 0x10  # flip one bit in the last tensor
    with open(broken, "wb") as f:
        f.write(data)
    try:
        ms.load(broken)
    except ms.CorruptCheckpointError as exc:
        console.print(f"[green]a flipped bit is caught:[/green] {exc}")
    else:  # pragma: no cover - would be a bug
        raise SystemExit("demo: corruption went unnoticed")
    console.print("[bold green]demo finished[/bold green]")


def _equal(a, b) -> bool:
    import numpy as np

    if isinstance(a, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if hasattr(a, "shape") and hasattr(a, "dtype"):
        return type(a) is type(b) and a.dtype == b.dtype and np.array_equal(np.asarray(a), np.asarray(b))
    return a == b
