"""Shared fixtures of the TensorFlow/Keras tests: TF is imported once, models are tiny."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TF is imported: keep its start-up chatter out

import numpy as np
import pytest

pytest.importorskip("tensorflow")
import keras  # noqa: E402


@keras.saving.register_keras_serializable(package="modelsafe_tests")
class Residual(keras.Model):
    """A subclassed model, registered through Keras' own serialization registry."""

    def __init__(self, units: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.inner = keras.layers.Dense(units, activation="tanh")
        self.out = keras.layers.Dense(2)

    def call(self, x):
        return self.out(self.inner(x) + x[:, : self.units])

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def sequential() -> keras.Model:
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, activation="relu"),
                             keras.layers.BatchNormalization(), keras.layers.Dense(2)])


def functional() -> keras.Model:
    x = keras.Input((4,))
    h = keras.layers.Dense(5, activation="gelu")(x)
    y = keras.layers.Concatenate()([h, keras.layers.LayerNormalization()(x)])
    return keras.Model(x, keras.layers.Dense(2)(y))


def subclassed() -> keras.Model:
    model = Residual(3)
    model(np.zeros((1, 4), "float32"))  # build
    return model


BUILDERS = {"sequential": sequential, "functional": functional, "subclassed": subclassed}


@pytest.fixture(params=sorted(BUILDERS))
def keras_model(request) -> keras.Model:
    keras.utils.set_random_seed(1)
    return BUILDERS[request.param]()


@pytest.fixture
def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((16, 4), dtype=np.float32), rng.random((16, 2), dtype=np.float32)
