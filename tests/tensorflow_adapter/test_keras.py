"""Keras models, layers and optimizers, and tf.Module trees: config + variables, classes only through the registry."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import modelsafe as ms
from modelsafe.adapters.tensorflow.keras_objects import variables_of
from modelsafe.adapters.tensorflow.targets import KerasLayerTarget, KerasOptimizerTarget

from craft import edit_manifest


def _outputs_equal(a, b, x):
    return np.array_equal(a(x, training=False).numpy(), b(x, training=False).numpy())


def test_models_rebuild_from_config_and_weights(tmp_path, keras_model, batch):
    x, _ = batch
    path = tmp_path / "m.safetensors"
    ms.save(keras_model, path)
    back = ms.load(path)
    assert type(back) is type(keras_model) and back is not keras_model
    assert _outputs_equal(back, keras_model, x)
    assert list(variables_of(back)) == list(variables_of(keras_model))


def test_file_keys_are_keras_weight_paths_and_no_pickle(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3), keras.layers.Dense(1)])
    ms.save(model, tmp_path / "m.safetensors")
    with ms.open(tmp_path / "m.safetensors") as reader:
        keys = sorted(reader.keys())
        text = json.dumps(reader.manifest)
    assert any("layers/dense_1/vars/0" in k for k in keys), keys
    assert "pickle" not in text


def test_optimizer_state_round_trips_bound_to_the_rebuilt_model(tmp_path, batch):
    x, y = batch
    keras.utils.set_random_seed(2)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    ms.save({"model": model, "optimizer": model.optimizer, "epoch": 2}, tmp_path / "c.safetensors")
    back = ms.load(tmp_path / "c.safetensors")
    opt = back["optimizer"]
    assert back["epoch"] == 2 and isinstance(opt, keras.optimizers.Adam)
    assert [v.numpy().tobytes() for v in opt.variables] == [v.numpy().tobytes() for v in model.optimizer.variables]
    assert int(opt.iterations.numpy()) == 4
    # the optimizer updates the rebuilt model's own variables
    built_for = {id(v) for v in back["model"].trainable_variables}
    assert {id(v) for v in opt._trainable_variables} == built_for


def test_optimizer_without_its_model_is_refused_at_save(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    opt = keras.optimizers.SGD()
    opt.build(model.trainable_variables)
    with pytest.raises(ms.UnsupportedObjectError, match="together"):
        ms.save({"optimizer": opt}, tmp_path / "o.safetensors")


def _lambda_model():
    return keras.Sequential([keras.Input((2,)), keras.layers.Lambda(lambda t: t * 2.0)])


def test_lambda_layers_are_refused_unless_trusted(tmp_path):
    path = tmp_path / "l.safetensors"
    ms.save(_lambda_model(), path)
    with pytest.raises(ms.UnsafeObjectError, match="Lambda"):
        ms.load(path)
    back = ms.load(path, trusted=["keras.layers.Lambda"])
    assert back(np.ones((1, 2), "float32")).numpy().tolist() == [[2.0, 2.0]]


def _with_config(tmp_path, edit):
    """A saved Dense model whose Keras config ``edit`` rewrites (what an attacker controls), re-sealed."""
    path = tmp_path / "m.safetensors"
    ms.save(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), path)

    def rewrite(manifest):
        node = manifest["tree"]
        node["config"] = json.dumps(edit(json.loads(node["config"])))

    edit_manifest(path, rewrite)
    return path


@pytest.mark.parametrize("module, name", [("os", "system"), ("keras.layers", "TFSMLayer"),
                                          ("keras.saving", "load_model"), ("builtins", "eval"),
                                          ("subprocess", "Popen")])
def test_a_config_naming_anything_unregistered_is_refused_before_keras_runs(tmp_path, module, name):
    def edit(config):
        layer = config["config"]["layers"][1]
        layer["module"], layer["class_name"], layer["registered_name"] = module, name, None
        return config

    path = _with_config(tmp_path, edit)
    with pytest.raises(ms.UnknownClassError, match="Nothing was imported"):
        ms.load(path, verify=False)


def test_a_config_naming_an_unknown_function_is_refused(tmp_path):
    def edit(config):
        config["config"]["layers"][1]["config"]["activation"] = {"module": "builtins", "class_name": "function",
                                                                 "config": "exec", "registered_name": "exec"}
        return config

    with pytest.raises(ms.UnknownClassError):
        ms.load(_with_config(tmp_path, edit), verify=False)


class Scaler(tf.Module):
    def __init__(self, n):
        super().__init__()
        self.w = tf.Variable(tf.range(n, dtype=tf.float32))
        self.parts = [tf.Module()]
        self.parts[0].b = tf.Variable(3, trainable=False)


def test_tf_modules_rebuild_with_a_recipe_and_say_so_without(tmp_path):
    module = ms.build(Scaler, 4)
    module.w.assign_add(tf.ones(4))
    ms.register(Scaler)
    ms.save({"m": module}, tmp_path / "m.safetensors")
    back = ms.load(tmp_path / "m.safetensors")["m"]
    assert isinstance(back, Scaler) and back.w.numpy().tolist() == [1, 2, 3, 4] and int(back.parts[0].b.numpy()) == 3
    ms.save({"m": Scaler(2)}, tmp_path / "bare.safetensors")
    with pytest.raises(ms.errors.MissingRecipeError, match="load_into"):
        ms.load(tmp_path / "bare.safetensors")


def test_load_targets_name_keras_variables_by_graph_path(keras_model):
    target = KerasLayerTarget()
    state = target.named_state(keras_model)
    assert target.handles(keras_model) and state
    clone = keras.models.clone_model(keras_model)  # auto-named layers differ; the keys do not
    assert list(target.named_state(clone)) == list(state)
    target.assign(clone, {k: v.numpy() for k, v in state.items()})
    x = np.ones((2, 4), "float32")
    assert _outputs_equal(clone, keras_model, x)


def test_optimizer_target_checks_counts_and_shapes():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    opt = keras.optimizers.Adam()
    target = KerasOptimizerTarget()
    with pytest.raises(ValueError, match="build it first"):
        target.conform(opt, [np.zeros(())] * 6)
    opt.build(model.trainable_variables)
    saved = [v.numpy() + 1 for v in opt.variables]
    target.assign(opt, target.conform(opt, saved))
    assert [v.numpy().tolist() for v in opt.variables] == [s.tolist() for s in saved]
    with pytest.raises(ValueError):
        target.conform(opt, [np.zeros(())] * len(saved))


def test_load_into_a_clone_built_from_code(tmp_path, batch):
    x, _ = batch
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5), keras.layers.Dense(2)])
    ms.save(model, tmp_path / "m.safetensors")
    clone = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5), keras.layers.Dense(2)])  # other auto-names
    report = ms.load_into(clone, tmp_path / "m.safetensors")
    assert report.ok and len(report.loaded) == 4
    assert _outputs_equal(clone, model, x)


def test_load_into_is_strict_and_select_rename_pick_layers(tmp_path):
    small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5), keras.layers.Dense(2)])
    ms.save(small, tmp_path / "m.safetensors")
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5), keras.layers.Dense(3)])
    before = [v.numpy().copy() for v in other.weights]
    with pytest.raises(ms.IncompatibleStateError) as info:
        ms.load_into(other, tmp_path / "m.safetensors")
    assert [m.key for m in info.value.report.mismatched] == ["layers/dense_1/vars/0", "layers/dense_1/vars/1"]
    assert all(np.array_equal(a, v.numpy()) for a, v in zip(before, other.weights))  # nothing written
    report = ms.load_into(other, tmp_path / "m.safetensors", strict=False)
    assert report.loaded == ["layers/dense/vars/0", "layers/dense/vars/1"]
    assert np.array_equal(other.weights[0].numpy(), small.weights[0].numpy())
    deeper = keras.Sequential([keras.Input((4,)), keras.layers.Dense(7), keras.layers.Dense(5), keras.layers.Dense(2)])
    report = ms.load_into(deeper, tmp_path / "m.safetensors", select="layers/dense_1/",
                          rename={"layers/dense_1/": "layers/dense_2/"}, strict=False)
    assert report.loaded == ["layers/dense_2/vars/0", "layers/dense_2/vars/1"]
    assert np.array_equal(deeper.weights[4].numpy(), small.weights[2].numpy())


def test_load_into_a_training_state_restores_model_and_optimizer(tmp_path, batch):
    x, y = batch
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(x, y, epochs=1, verbose=0)
    ms.save({"model": model, "optimizer": model.optimizer}, tmp_path / "c.safetensors")
    fresh = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    fresh.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    fresh.optimizer.build(fresh.trainable_variables)
    ms.load_into({"model": fresh, "optimizer": fresh.optimizer}, tmp_path / "c.safetensors")
    assert [v.numpy().tobytes() for v in fresh.optimizer.variables] == [v.numpy().tobytes() for v in model.optimizer.variables]
    assert _outputs_equal(fresh, model, x)


def test_load_into_a_tf_variable_and_a_tf_module(tmp_path):
    ms.save({"v": tf.Variable([1.0, 2.0]), "m": Scaler(3)}, tmp_path / "v.safetensors")
    v, m = tf.Variable([0.0, 0.0]), Scaler(3)
    m.w.assign(tf.zeros(3))
    ms.load_into({"v": v, "m": m}, tmp_path / "v.safetensors")
    assert v.numpy().tolist() == [1.0, 2.0] and m.w.numpy().tolist() == [0.0, 1.0, 2.0]


def test_show_lists_keras_objects_and_their_variables(tmp_path):
    from cli_support import invoke

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    ms.save({"model": model, "optimizer": model.optimizer}, tmp_path / "c.safetensors")
    result = invoke("show", tmp_path / "c.safetensors")
    assert result.code == 0, result.err
    assert "keras.layer  keras.src.models.sequential:Sequential" in result.out
    assert "keras.optimizer  keras.src.optimizers.adam:Adam" in result.out
    assert "model.layers/dense/vars/0" in result.out and "optimizer.state.2" in result.out


def test_keras_weights_h5_converted_by_modelsafe_load_into_the_model(tmp_path, batch):
    from cli_support import invoke

    x, _ = batch
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5), keras.layers.BatchNormalization(),
                              keras.layers.Dense(2)])
    model.save_weights(tmp_path / "m.weights.h5")
    result = invoke("convert", tmp_path / "m.weights.h5", tmp_path / "m.safetensors")
    assert result.code == 0, result.err
    clone = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5), keras.layers.BatchNormalization(),
                              keras.layers.Dense(2)])
    report = ms.load_into(clone, tmp_path / "m.safetensors")  # Keras' own keys are modelsafe's keys
    assert report.ok and len(report.loaded) == 8
    assert _outputs_equal(clone, model, x)


def test_checkpoints_record_and_restore_keras_global_seed_generator(tmp_path):
    keras.utils.set_random_seed(9)
    keras.random.uniform((2,))  # Keras creates its global seed generator on first use
    ck = ms.Checkpoints(tmp_path / "run")
    ck.save({"epoch": 1}, step=1)
    expected = keras.random.uniform((3,)).numpy()
    keras.random.uniform((5,))  # the run goes on, then "crashes"
    ck.load_into({"epoch": 0})
    assert np.array_equal(keras.random.uniform((3,)).numpy(), expected)
    ck.close()


def test_a_damaged_keras_rng_entry_changes_nothing(tmp_path):
    from modelsafe.rng import restore_json

    keras.random.uniform((1,))
    with pytest.raises(ms.CorruptCheckpointError):
        restore_json({"keras": ["x", 1]}, "ckpt")


@pytest.mark.parametrize("field, value", [("config", 5), ("config", "{not json"), ("config", "[]"), ("state", 3),
                                          ("state", {"tuple": []})])
def test_damaged_keras_layer_nodes_are_corrupt_checkpoint_errors(tmp_path, field, value):
    path = tmp_path / "m.safetensors"
    ms.save(keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)]), path)
    edit_manifest(path, lambda manifest: manifest["tree"].__setitem__(field, value))
    with pytest.raises((ms.CorruptCheckpointError, ms.UnknownClassError)):
        ms.load(path)


@pytest.mark.parametrize("params", [5, [{"tensor": 3}], [{"tensor": "nowhere"}]])
def test_damaged_keras_optimizer_references_are_refused(tmp_path, params):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    path = tmp_path / "c.safetensors"
    ms.save({"model": model, "optimizer": model.optimizer}, path)

    def edit(manifest):
        for key, node in manifest["tree"]["dict"]:
            if key == "optimizer":
                node["params"] = params

    edit_manifest(path, edit)
    with pytest.raises(ms.CorruptCheckpointError):
        ms.load(path)
