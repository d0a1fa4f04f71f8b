"""Write the Keras 3 golden files used by tests/test_legacy_keras_h5.py (run by hand; needs keras).

    KERAS_BACKEND=torch python tests/golden/make_keras_golden.py

Keras is not a test dependency: the files are committed so the reader is checked against
what Keras itself writes, not only against our reading of its layout.
"""

import os

import keras
import numpy as np

here = os.path.dirname(os.path.abspath(__file__))
keras.utils.set_random_seed(0)
model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.BatchNormalization(), keras.layers.Dense(2)])
model.compile(optimizer="adam", loss="mse")
rng = np.random.default_rng(0)
model.fit(rng.random((16, 4)), rng.random((16, 2)), epochs=1, verbose=0)
model.save_weights(os.path.join(here, "keras3-sequential.weights.h5"))
model.save(os.path.join(here, "keras3-sequential.keras"))
