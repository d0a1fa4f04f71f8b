import importlib.util
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")

SOAK = os.environ.get("MODELSAFE_SOAK") == "1"

# tests/mxnet runs in .venv-mxnet (MXNet 1.9 needs numpy<1.24); scripts/test.sh runs it there
collect_ignore = [] if importlib.util.find_spec("mxnet") else ["mxnet"]


@pytest.fixture
def soak() -> bool:
    """True when the full soak counts should run (MODELSAFE_SOAK=1), else a bounded sample."""
    return SOAK


@pytest.fixture(scope="module")
def fuzz_setup(tmp_path_factory) -> dict:
    """A work directory with the fuzz harness's base files and canaries (tests/fuzzrun.py)."""
    import fuzzrun

    return fuzzrun.prepare(str(tmp_path_factory.mktemp("fuzz")))
