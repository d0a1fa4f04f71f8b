import importlib.util
import os

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci" if os.environ.get("CI") else "dev")

SOAK = os.environ.get("MODELSAFE_SOAK") == "1"

# tests/mxnet_adapter runs in .venv-mxnet (MXNet 1.9 needs numpy<1.24); scripts/test.sh runs it there
collect_ignore = [] if importlib.util.find_spec("mxnet") else ["mxnet_adapter"]


@pytest.fixture
def soak() -> bool:
    """True when the full soak counts should run (MODELSAFE_SOAK=1), else a bounded sample."""
    return SOAK


@pytest.fixture(scope="module")
def fuzz_setup(tmp_path_factory) -> dict:
    """A work directory with the fuzz harness's base files and canaries (tests/fuzzrun.py)."""
    import fuzzrun

    return fuzzrun.prepare(str(tmp_path_factory.mktemp("fuzz")))


# -- an S3-compatible server on loopback (moto), for the remote-storage tests ---------------

def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint():
    """URL of a moto S3 server started on 127.0.0.1 (a random free port) for the whole session.

    It runs in its own process, so a test can kill a writer (or measure its memory) without it.
    """
    import socket
    import subprocess
    import sys
    import time

    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=30)


S3_CREDENTIALS = {"key": "testing", "secret": "testing"}


@pytest.fixture
def s3_bucket(s3_endpoint, request) -> tuple[str, dict]:
    """(``s3://<fresh bucket>``, storage_options) on the loopback server; credentials are dummies
    passed in storage_options (the environment is left alone)."""
    import uuid

    import boto3

    name = f"t-{uuid.uuid4().hex[:20]}"
    boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                 region_name="us-east-1").create_bucket(Bucket=name)
    options = {**S3_CREDENTIALS, "endpoint_url": s3_endpoint, "client_kwargs": {"region_name": "us-east-1"}}
    return f"s3://{name}", options
