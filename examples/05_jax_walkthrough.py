"""JAX / Flax / Optax: save and load an array, a list, a dict; a model's parameters into a
clone built from code (the outputs match); and an Optax training state that resumes.

    python examples/05_jax_walkthrough.py [DIR]
"""

import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import modelsafe as ms


class MLP(nnx.Module):
    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(din, 32, rngs=rngs)
        self.out = nnx.Linear(32, dout, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x)))


def tensors(directory: Path) -> None:
    x = jnp.arange(4.0)
    ms.save(x, directory / "x.safetensors")
    print("array:", ms.load(directory / "x.safetensors"))
    ms.save([x, jnp.ones(2, jnp.bfloat16)], directory / "xy.safetensors")
    print("list:", ms.load(directory / "xy.safetensors"))
    ms.save({"x": x, "y": jnp.zeros(3, jnp.int8)}, directory / "mydict.safetensors")
    print("dict:", ms.load(directory / "mydict.safetensors"))


def clone_parameters(directory: Path) -> None:
    model = MLP(8, 4, rngs=nnx.Rngs(0))
    ms.save(nnx.state(model), directory / "mlp.safetensors")   # Params keep their types

    clone = MLP(8, 4, rngs=nnx.Rngs(1))                         # different weights until we load
    nnx.update(clone, ms.load(directory / "mlp.safetensors"))
    x = jax.random.normal(jax.random.key(2), (5, 8))
    print("outputs equal:", bool(jnp.array_equal(model(x), clone(x))))


def optax_resume(directory: Path) -> None:
    model = MLP(8, 1, rngs=nnx.Rngs(0))
    graph, params = nnx.split(model)
    tx = optax.adam(1e-2)
    x = jax.random.normal(jax.random.key(3), (16, 8))
    y = x.sum(axis=1, keepdims=True)

    @jax.jit
    def step(params, opt_state):
        grads = jax.grad(lambda p: ((nnx.merge(graph, p)(x) - y) ** 2).mean())(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    opt_state = tx.init(params)
    params, opt_state = step(params, opt_state)
    ms.save({"params": params, "opt_state": opt_state, "step": 1}, directory / "train.safetensors")

    state = ms.load(directory / "train.safetensors")       # a fresh process would do the same
    print("optax state:", type(state["opt_state"][0]).__name__, "at step", state["step"])
    resumed, _ = step(state["params"], state["opt_state"])
    uninterrupted, _ = step(params, opt_state)
    same = all(bool(jnp.array_equal(a, b)) for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted)))
    print("resumed step equal:", same)


def main(directory: Path) -> None:
    tensors(directory)
    clone_parameters(directory)
    optax_resume(directory)


if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tmp))
