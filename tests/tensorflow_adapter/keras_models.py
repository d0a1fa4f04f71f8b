"""The small Keras models the TensorFlow tests share (a helper module, imported by conftest and child processes)."""

import keras
import numpy as np


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
