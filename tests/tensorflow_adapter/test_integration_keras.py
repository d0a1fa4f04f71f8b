"""modelsafe.integrations.keras.ModelCheckpoint: checkpoints each epoch; a resumed fit equals an uninterrupted one."""

import keras
import numpy as np
import pytest

import modelsafe as ms
from modelsafe.integrations.keras import ModelCheckpoint


def _model():
    keras.utils.set_random_seed(11)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    return model


def _fit(model, batch, start, end, callbacks=()):
    x, y = batch
    model.fit(x, y, validation_data=(x[:4], y[:4]), epochs=end, initial_epoch=start, batch_size=4, shuffle=False,
              verbose=0, callbacks=list(callbacks))


@pytest.mark.parametrize("async_save", [False, True])
def test_a_fit_resumed_from_the_callback_equals_an_uninterrupted_one(tmp_path, batch, async_save):
    uninterrupted = _model()
    _fit(uninterrupted, batch, 0, 3)

    run = tmp_path / "run"
    first = _model()
    callback = ModelCheckpoint(run, monitor="val_loss", keep_last=1, keep_best=1, async_save=async_save)
    assert callback.restore(first) == 0  # a fresh run starts at epoch 0
    _fit(first, batch, 0, 2, [callback])
    callback.checkpoints.close()  # as if that process had ended: the run's lock is free

    resumed = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6, activation="tanh"), keras.layers.Dense(2)])
    resumed.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    again = ModelCheckpoint(run, monitor="val_loss", keep_last=1, keep_best=1)
    start = again.restore(resumed)
    assert start == 2
    _fit(resumed, batch, start, 3, [again])
    assert [w.numpy().tobytes() for w in resumed.weights] == [w.numpy().tobytes() for w in uninterrupted.weights]
    assert int(resumed.optimizer.iterations.numpy()) == int(uninterrupted.optimizer.iterations.numpy())


def test_checkpoints_are_named_by_epoch_and_metric_kept_and_rebuild_with_ms_load(tmp_path, batch):
    model = _model()
    callback = ModelCheckpoint(tmp_path / "run", monitor="val_loss", keep_last=1, keep_best=1)
    _fit(model, batch, 0, 3, [callback])
    names = [info.name for info in callback.checkpoints.list()]
    assert 1 <= len(names) <= 2 and all(n.startswith("epoch00") and "-val_loss" in n for n in names)
    latest = ms.Checkpoints(tmp_path / "run").latest()
    assert latest.step == 2 and "val_loss" in latest.metrics
    state = ms.load(latest.path)
    assert state["epoch"] == 3 and isinstance(state["model"], keras.Sequential)
    x = batch[0]
    assert np.array_equal(state["model"](x).numpy(), model(x).numpy())


def test_a_monitor_missing_from_the_logs_is_an_error(tmp_path, batch):
    x, y = batch
    model = _model()
    callback = ModelCheckpoint(tmp_path / "run", monitor="val_acc", keep_best=1)
    with pytest.raises(ms.ModelsafeError, match="val_acc"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[callback])
