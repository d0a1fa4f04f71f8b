"""modelsafe.adapters.jax: jax arrays of every dtype, Optax states, Flax Linen/NNX state and modules."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

jax = pytest.importorskip("jax")
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402
from flax.core import FrozenDict  # noqa: E402

import modelsafe as ms  # noqa: E402
from modelsafe.adapters.jax import FRAMEWORK  # noqa: E402
from modelsafe.adapters.jax.targets import ImmutableArrayTarget, NnxModuleTarget  # noqa: E402
from modelsafe.adapters.protocol import StateMismatch  # noqa: E402
from modelsafe.errors import MissingRecipeError, UnsupportedObjectError  # noqa: E402

NARROW = ["bool", "int8", "int16", "int32", "uint8", "uint16", "uint32", "float16", "bfloat16", "float32",
          "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu", "complex64"]
WIDE = ["int64", "uint64", "float64", "complex128"]   # need jax_enable_x64
NOT_IN_FORMAT = ["int4", "uint4", "int2", "uint2", "float4_e2m1fn", "float8_e3m4", "float8_e4m3", "float8_e4m3b11fnuz"]


def _random(dtype: str, shape: tuple, seed: int = 0) -> np.ndarray:
    """Arbitrary bit patterns of ``dtype`` (NaNs and all), as a numpy array jax can take."""
    npdt = np.dtype(jnp.dtype(dtype))
    raw = np.random.default_rng(seed).integers(0, 256, size=int(np.prod(shape)) * npdt.itemsize, dtype=np.uint8)
    arr = raw.view(npdt).reshape(shape)
    return arr.astype(bool) if dtype == "bool" else arr


def _same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.mark.parametrize("dtype", NARROW + WIDE)
@pytest.mark.parametrize("shape", [(), (0,), (3, 5)])
def test_every_dtype_round_trips_bit_exact(tmp_path, dtype, shape):
    with jax.enable_x64(dtype in WIDE):
        x = jnp.asarray(_random(dtype, shape))
        assert x.dtype == jnp.dtype(dtype)
        ms.save({"x": x}, tmp_path / "a.safetensors")
        y = ms.load(tmp_path / "a.safetensors")["x"]
    assert isinstance(y, jax.Array) and _same_bits(x, y)


@pytest.mark.parametrize("dtype", NOT_IN_FORMAT)
def test_a_dtype_the_format_lacks_is_refused_naming_path_and_dtype(tmp_path, dtype):
    with pytest.raises(UnsupportedObjectError, match=rf'obj\["w"\].*{dtype}'):
        ms.save({"w": jnp.zeros(4, dtype)}, tmp_path / "a.safetensors")


def test_64_bit_tensor_with_x64_off_is_an_error_not_a_silent_narrowing(tmp_path):
    ms.save({"steps": np.arange(3, dtype=np.int64)}, tmp_path / "a.safetensors")
    with jax.enable_x64(False):
        with pytest.raises(UnsupportedObjectError, match=r"'steps'.*int64.*jax_enable_x64"):
            ms.load(tmp_path / "a.safetensors", framework="jax")
    with jax.enable_x64(True):
        assert ms.load(tmp_path / "a.safetensors", framework="jax")["steps"].dtype == jnp.int64


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(dtype=st.sampled_from(NARROW), shape=st.lists(st.integers(0, 4), max_size=3).map(tuple), seed=st.integers(0, 99))
def test_hypothesis_round_trip(tmp_path, dtype, shape, seed):
    tree = {"a": [jnp.asarray(_random(dtype, shape, seed))], "b": (jnp.asarray(_random(dtype, shape, seed + 1)),)}
    ms.save(tree, tmp_path / "h.safetensors")
    back = ms.load(tmp_path / "h.safetensors")
    assert type(back["b"]) is tuple and _same_bits(tree["a"][0], back["a"][0]) and _same_bits(tree["b"][0], back["b"][0])


def test_same_array_twice_is_stored_once_and_loads_from_numpy_and_torch(tmp_path):
    w = jnp.arange(4.0)
    ms.save({"a": w, "b": w}, tmp_path / "t.safetensors")
    with ms.open(tmp_path / "t.safetensors") as reader:
        assert len(reader.manifest["tensors"]) == 1
    assert type(ms.load(tmp_path / "t.safetensors", framework="numpy")["b"]) is np.ndarray


def test_map_location_places_on_a_jax_device_and_refuses_others(tmp_path):
    ms.save({"w": np.ones(2, np.float32)}, tmp_path / "a.safetensors")
    cpu = jax.devices("cpu")[0]
    assert ms.load(tmp_path / "a.safetensors", framework="jax", map_location="cpu")["w"].devices() == {cpu}
    assert ms.load(tmp_path / "a.safetensors", framework="jax", map_location=cpu)["w"].devices() == {cpu}
    with pytest.raises(ms.ModelsafeError, match="jax has no such device"):
        ms.load(tmp_path / "a.safetensors", framework="jax", map_location="nosuchdevice")


def test_deleted_and_traced_arrays_are_refused_clearly(tmp_path):
    x = jnp.ones(3)
    x.delete()
    with pytest.raises(UnsupportedObjectError, match="deleted or donated"):
        ms.save({"x": x}, tmp_path / "a.safetensors")
    with pytest.raises(UnsupportedObjectError, match="PRNG key"):
        ms.save({"k": jax.random.key(0)}, tmp_path / "a.safetensors")


def test_snapshot_survives_the_original_being_donated():
    x = jnp.arange(3.0)
    memo: dict = {}
    copy = FRAMEWORK.snapshot(x, memo)
    assert FRAMEWORK.snapshot(x, memo) is copy
    x.delete()
    assert np.array_equal(copy, [0.0, 1.0, 2.0])


# -- Optax and Linen ---------------------------------------------------------------------------

def test_optax_states_come_back_as_the_real_optax_classes(tmp_path):
    params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.zeros(2)}}
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3))
    state = tx.init(params)
    ms.save({"opt": state}, tmp_path / "o.safetensors")
    back = ms.load(tmp_path / "o.safetensors")["opt"]
    assert jax.tree.structure(back) == jax.tree.structure(state)
    assert type(back[1]) is type(state[1]) and type(back[1].inner_state[0]) is optax.ScaleByAdamState
    assert all(_same_bits(a, b) for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(state)))


def test_linen_variables_and_frozen_dicts_round_trip(tmp_path):
    import flax.linen as nn

    model = nn.Sequential([nn.Dense(4), nn.relu, nn.Dense(2)])
    variables = model.init(jax.random.key(0), jnp.ones((1, 3)))
    frozen = FrozenDict(variables)
    ms.save({"plain": variables, "frozen": frozen}, tmp_path / "l.safetensors")
    back = ms.load(tmp_path / "l.safetensors")
    assert type(back["frozen"]) is FrozenDict and jax.tree.structure(back["plain"]) == jax.tree.structure(variables)
    x = jnp.ones((2, 3))
    assert _same_bits(model.apply(back["plain"], x), model.apply(variables, x))
    assert _same_bits(model.apply(back["frozen"], x), model.apply(variables, x))


# -- Flax NNX ---------------------------------------------------------------------------------------

@ms.rebuildable(name="tests.jax.Net")
class Net(nnx.Module):
    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        self.dense = nnx.Linear(din, 8, rngs=rngs)
        self.bn = nnx.BatchNorm(8, rngs=rngs)
        self.drop = nnx.Dropout(0.2, rngs=rngs)
        self.out = nnx.Linear(8, dout, rngs=rngs)

    def __call__(self, x):
        return self.out(self.drop(nnx.relu(self.bn(self.dense(x)))))


def test_nnx_state_round_trip_keeps_variable_types_and_updates_a_fresh_model(tmp_path):
    model = Net(3, 2, rngs=nnx.Rngs(0, dropout=1))
    model(jnp.ones((4, 3)))   # moves batch stats and the dropout key
    ms.save(nnx.state(model), tmp_path / "s.safetensors")
    state = ms.load(tmp_path / "s.safetensors")
    assert isinstance(state, nnx.State) and type(state["bn"]["mean"]) is nnx.BatchStat
    assert type(state["dense"]["kernel"]) is nnx.Param
    clone = Net(3, 2, rngs=nnx.Rngs(42, dropout=7))
    nnx.update(clone, state)
    a, b = jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(clone))
    assert len(a) == len(b) and all(_same_bits(jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x,
                                               jax.random.key_data(y) if jax.dtypes.issubdtype(y.dtype, jax.dtypes.prng_key) else y)
                                    for x, y in zip(a, b))
    assert _same_bits(model(jnp.ones((2, 3))), clone(jnp.ones((2, 3))))   # dropout draws the same mask


def test_nnx_module_is_rebuilt_by_load_and_without_recipe_says_load_into(tmp_path):
    model = Net(3, 2, rngs=nnx.Rngs(0))
    ms.save({"model": model, "step": 3}, tmp_path / "m.safetensors")
    back = ms.load(tmp_path / "m.safetensors")
    model.eval(), back["model"].eval()
    assert type(back["model"]) is Net and back["step"] == 3
    assert _same_bits(model(jnp.ones((2, 3))), back["model"](jnp.ones((2, 3))))

    bare = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    ms.save(bare, tmp_path / "bare.safetensors")
    with pytest.raises(MissingRecipeError, match="ms.load_into"):
        ms.load(tmp_path / "bare.safetensors")


def test_nnx_load_target_checks_everything_before_writing():
    target = NnxModuleTarget()
    model = Net(3, 2, rngs=nnx.Rngs(0))
    other = Net(3, 5, rngs=nnx.Rngs(1))
    assert target.handles(model) and not target.handles(jnp.ones(1))
    with pytest.raises(StateMismatch, match=r"out\.(bias|kernel) holds \((8, )?5,?\)"):
        target.conform(model, nnx.state(other))
    with pytest.raises(StateMismatch, match="missing"):
        target.conform(model, nnx.state(model, nnx.Param))
    before = np.asarray(model.out.kernel[...])
    target.assign(model, target.conform(model, nnx.state(Net(3, 2, rngs=nnx.Rngs(9)))))
    assert not np.array_equal(before, model.out.kernel[...])


def test_jax_arrays_are_no_load_into_target_and_the_error_says_why(tmp_path):
    assert not ImmutableArrayTarget().handles(np.ones(2))
    state = optax.adam(1e-3).init({"w": jnp.ones(3)})
    ms.save({"w": jnp.ones(3), "opt": state}, tmp_path / "w.safetensors")
    for target in (jnp.zeros(3), {"w": jnp.zeros(3)}, {"opt": state}):   # an Optax state: namedtuples of arrays
        with pytest.raises(ms.ModelsafeError, match="immutable.*ms.load"):
            ms.load_into(target, tmp_path / "w.safetensors")


def test_load_into_an_nnx_module_checks_then_writes_every_variable(tmp_path):
    model = Net(3, 2, rngs=nnx.Rngs(0))
    x = jnp.ones((2, 3))
    for saved, wrap in ((nnx.state(model), False), ({"model": model, "step": 1}, True), ({"model": model}, False), (model, False)):
        ms.save(saved, tmp_path / "m.safetensors")
        clone = Net(3, 2, rngs=nnx.Rngs(5))
        target = {"model": clone} if wrap else clone
        report = ms.load_into(target, tmp_path / "m.safetensors")
        assert report.ok and report.loaded
        model.eval(), clone.eval()
        assert _same_bits(model(x), clone(x))
    wider = Net(3, 5, rngs=nnx.Rngs(0))
    before = np.asarray(wider.out.kernel[...])
    with pytest.raises(ms.IncompatibleStateError, match=r"out\.(bias|kernel)"):
        ms.load_into(wider, tmp_path / "m.safetensors")
    assert np.array_equal(before, wider.out.kernel[...])   # nothing was written


def _run(code: str, *args: str) -> str:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


NET = '''
import sys, jax, jax.numpy as jnp, numpy as np, optax, modelsafe as ms
from flax import nnx
class Net(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(3, 16, rngs=rngs); self.b = nnx.Linear(16, 1, rngs=rngs)
    def __call__(self, x):
        return self.b(nnx.gelu(self.a(x)))
x = jax.random.normal(jax.random.key(1), (32, 3)); y = jnp.sin(x).sum(1, keepdims=True)
tx = optax.adamw(1e-2)
def loss(p, g):
    return ((nnx.merge(g, p)(x) - y) ** 2).mean()
@jax.jit   # faster than eager here, compile included (7.6 s vs 10.3 s of CPU per process)
def step(p, o, g):
    grads = jax.grad(loss)(p, g)
    updates, o = tx.update(grads, o, p)
    return optax.apply_updates(p, updates), o
'''


def test_clone_in_another_process_and_resumed_optax_step_are_bit_exact(tmp_path):
    ckpt, out = str(tmp_path / "ck.safetensors"), str(tmp_path)
    _run(NET + '''
model = Net(nnx.Rngs(0)); g, p = nnx.split(model)
o = tx.init(p)
for _ in range(3):
    p, o = step(p, o, g)
ms.save({"params": p, "opt": o}, sys.argv[1])
p, o = step(p, o, g)                      # the uninterrupted run goes on
np.save(sys.argv[2] + "/ref.npy", np.asarray(nnx.merge(g, p)(x)))
''', ckpt, out)
    printed = _run(NET + '''
clone = Net(nnx.Rngs(123)); g, _ = nnx.split(clone)
saved = ms.load(sys.argv[1])
print(type(saved["opt"][0]).__name__)
p, o = step(saved["params"], saved["opt"], g)   # one more step after a resume in a fresh process
np.testing.assert_array_equal(np.load(sys.argv[2] + "/ref.npy"), np.asarray(nnx.merge(g, p)(x)))
print("resumed equal")
''', ckpt, out)
    assert "ScaleByAdamState" in printed and "resumed equal" in printed


def test_optax_records_resolve_before_the_program_imports_optax(tmp_path):
    params = {"w": jnp.ones(3)}
    ms.save({"params": params, "opt": optax.adam(1e-3).init(params)}, tmp_path / "o.safetensors")
    printed = _run('''
import sys, modelsafe as ms
state = ms.load(sys.argv[1])["opt"]
print(type(state[0]).__module__, type(state[0]).__name__, "optax" in sys.modules)
''', str(tmp_path / "o.safetensors"))
    assert printed.split() == ["optax._src.transform", "ScaleByAdamState", "True"]


def test_async_checkpoint_keeps_what_was_saved_when_the_arrays_are_donated_after(tmp_path):
    params = {"w": jnp.arange(6.0), "b": jnp.ones(2, jnp.bfloat16)}
    opt = optax.adam(1e-3).init(params)
    ck = ms.Checkpoints(tmp_path / "run", async_save=True)
    ck.save({"params": params, "opt": opt}, step=1)
    for leaf in jax.tree.leaves((params, opt)):
        leaf.delete()                       # what jit(donate_argnums=...) does to the buffers
    ck.wait()
    back = ck.load("latest")
    assert _same_bits(back["params"]["w"], np.arange(6.0, dtype=np.float32))
    assert type(back["opt"][0]) is optax.ScaleByAdamState and isinstance(back["params"]["b"], jax.Array)


def test_a_file_naming_another_class_for_a_variable_or_module_gets_nothing_called(tmp_path):
    from modelsafe.errors import CorruptCheckpointError, UnknownClassError

    from craft import edit_manifest

    path = tmp_path / "m.safetensors"
    ms.save(Net(3, 2, rngs=nnx.Rngs(0)), path)

    def rename(node, old, new):
        if isinstance(node, dict):
            if node.get("name") == old:
                node["name"] = new
            for value in node.values():
                rename(value, old, new)
        elif isinstance(node, list):
            for value in node:
                rename(value, old, new)

    edit_manifest(path, lambda m: rename(m["tree"], "flax.nnx.Param", "os:system"))
    with pytest.raises(UnknownClassError, match="os:system"):
        ms.load(path)
    edit_manifest(path, lambda m: rename(m["tree"], "os:system", "tests.jax.Net"))   # a module where a Variable belongs
    with pytest.raises(CorruptCheckpointError, match="Variable"):
        ms.load(path)


def test_variable_metadata_from_a_file_is_plain_values_only(tmp_path):
    from craft import edit_manifest

    path = tmp_path / "v.safetensors"
    ms.save({"v": nnx.Param(jnp.ones(2), tag="keep")}, path)
    assert ms.load(path)["v"].get_metadata()["tag"] == "keep"

    def add_hook(node):
        if isinstance(node, dict):
            if node.get("object") == "flax.nnx.variable":
                node["metadata"]["dict"].append(["on_get_value", "print"])
            for value in node.values():
                add_hook(value)
        elif isinstance(node, list):
            for value in node:
                add_hook(value)

    edit_manifest(path, lambda m: add_hook(m["tree"]))
    with pytest.raises(ms.ModelsafeError, match="hooks"):
        ms.load(path)
