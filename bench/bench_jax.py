"""Flax NNX parameters + Optax Adam state: save/load time of modelsafe vs Flax's and Orbax's savers.

The state is ``{"params": <nnx.Param values as a nested dict>, "opt_state": optax.adam(...).init(params)}``
of a stack of ``--layers`` square ``nnx.Linear`` layers of width ``--width`` (params + 2
Adam moments = 3x the parameter bytes).  Every contender saves the same pytree and
loads it back (every array ready on the device):

* **flax.serialization** (the baseline): ``to_bytes`` (msgpack) written to a file and
  fsync'ed; load: read the file, ``from_bytes(target, data)``;
* **ms.save / ms.load** (durable: temp file, fsync, rename) and ``ms.load(verify=False)``;
* **orbax StandardCheckpointer**: ``save`` + ``wait_until_finished``; ``restore`` with
  the abstract target (skipped with ``--no-orbax``).

ratio = baseline time / contender time (higher is faster); median of ``--repeat`` runs
after one warm-up, ``os.sync()`` before every timed run.

    python bench/bench_jax.py                    # 8 layers of 2048 (128 MiB params, 384 MiB state)
    python bench/bench_jax.py --tiny --json      # the smoke test's sizes
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, serialization

import modelsafe as ms

MIB = 1 << 20


class Stack(nnx.Module):
    def __init__(self, width: int, layers: int, *, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(width, width, rngs=rngs) for _ in range(layers)])


def make_state(width: int, layers: int) -> dict:
    params = nnx.to_pure_dict(nnx.state(Stack(width, layers, rngs=nnx.Rngs(0)), nnx.Param))
    opt_state = optax.adam(1e-3).init(params)
    opt_state = jax.tree.map(lambda x: x + 1 if x.ndim else x, opt_state)   # non-zero moments
    return {"params": params, "opt_state": opt_state}


def ready(tree: Any) -> Any:
    return jax.block_until_ready(tree)


def _flax_save(state: Any, path: Path) -> None:
    with open(path, "wb") as f:
        f.write(serialization.to_bytes(state))
        f.flush()
        os.fsync(f.fileno())


def _flax_load(target: Any, path: Path) -> Any:
    return ready(serialization.from_bytes(target, path.read_bytes()))


def contenders(state: Any, orbax: bool) -> list[tuple[str, str, Callable[[Path], Any], Callable[[Path], Any]]]:
    """(name, file name, save, load) per contender; the first is the baseline."""
    out = [
        ("flax.serialization", "state.msgpack", lambda p: _flax_save(state, p), lambda p: _flax_load(state, p)),
        ("ms", "state.safetensors", lambda p: ms.save(state, p), lambda p: ready(ms.load(p))),
        ("ms verify=False", "state.safetensors", lambda p: ms.save(state, p), lambda p: ready(ms.load(p, verify=False))),
    ]
    if orbax:
        import orbax.checkpoint as ocp

        checkpointer = ocp.StandardCheckpointer()
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)

        def orbax_save(p: Path) -> None:
            checkpointer.save(p.absolute(), state)
            checkpointer.wait_until_finished()

        out.append(("orbax StandardCheckpointer", "orbax", orbax_save, lambda p: ready(checkpointer.restore(p.absolute(), abstract))))
    return out


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _timed(fn: Callable[[], Any]) -> float:
    os.sync()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(width: int, layers: int, repeat: int, directory: Path, orbax: bool) -> dict:
    state = ready(make_state(width, layers))
    nbytes = sum(x.nbytes for x in jax.tree.leaves(state))
    rows = []
    for name, file, save, load in contenders(state, orbax):
        path = directory / file
        saves, loads = [], []
        for i in range(repeat + 1):
            _remove(path)
            s = _timed(lambda: save(path))
            back = load(path)   # warm-up load is also a correctness check
            if i == 0:
                assert all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state))), name
            del back
            t = _timed(lambda: load(path))
            if i:
                saves.append(s)
                loads.append(t)
        _remove(path)
        rows.append({"name": name, "save": statistics.median(saves), "load": statistics.median(loads)})
    base = rows[0]
    for row in rows:
        row["save_ratio"] = base["save"] / row["save"]
        row["load_ratio"] = base["load"] / row["load"]
    return {"width": width, "layers": layers, "bytes": nbytes, "tensors": len(jax.tree.leaves(state)), "rows": rows}


def table(result: dict) -> str:
    lines = [f"Flax NNX {result['layers']} x Linear({result['width']}) + Adam: {result['bytes'] / MIB:.1f} MiB in "
             f"{result['tensors']} arrays (ratio = flax.serialization time / contender time; higher is faster)",
             f"{'contender':<28}{'save s':>9}{'ratio':>8}{'load s':>9}{'ratio':>8}"]
    for r in result["rows"]:
        lines.append(f"{r['name']:<28}{r['save']:>9.3f}{r['save_ratio']:>8.2f}{r['load']:>9.3f}{r['load_ratio']:>8.2f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=2048)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per contender (default 5)")
    parser.add_argument("--dir", default=None, help="where the files go (default: the system temp directory)")
    parser.add_argument("--no-orbax", action="store_true", help="skip Orbax")
    parser.add_argument("--tiny", action="store_true", help="2 layers of 64, one run (the smoke test)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    if args.tiny:
        args.width, args.layers, args.repeat = 64, 2, 1
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        result = run(args.width, args.layers, args.repeat, Path(tmp), not args.no_orbax)
    print(json.dumps(result, indent=1) if args.json else table(result))


if __name__ == "__main__":
    main()
