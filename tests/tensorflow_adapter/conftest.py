"""Shared fixtures of the TensorFlow/Keras tests: TF is imported once, models are tiny."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # before TF is imported: keep its start-up chatter out

import numpy as np
import pytest

pytest.importorskip("tensorflow")
import keras  # noqa: E402
from keras_models import BUILDERS  # noqa: E402  (after TF's log level is set)


@pytest.fixture(params=sorted(BUILDERS))
def keras_model(request) -> keras.Model:
    keras.utils.set_random_seed(1)
    return BUILDERS[request.param]()


@pytest.fixture
def batch() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((16, 4), dtype=np.float32), rng.random((16, 2), dtype=np.float32)
