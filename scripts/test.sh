#!/usr/bin/env bash
# Set everything up, then run the whole test suite (a bounded sample of the slow soak tests):
# the main suite in .venv, then tests/mxnet_adapter (and the framework-protocol checks, with MXNet
# installed) in .venv-mxnet (MXNet 1.9 needs numpy<1.24).
# Both runs must pass.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup_mxnet.sh
status=0
"${MODELSAFE_VENV:-.venv}/bin/python" -m pytest -q tests "$@" || status=$?
"${MODELSAFE_MXNET_VENV:-.venv-mxnet}/bin/python" -m pytest -q tests/mxnet_adapter tests/test_framework_neutral.py "$@" || status=$?
exit "$status"
