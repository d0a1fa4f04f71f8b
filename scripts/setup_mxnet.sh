#!/usr/bin/env bash
# Create .venv-mxnet: modelsafe (editable) with MXNet 1.9.1 and the test tools, for tests/mxnet_adapter.
# MXNet 1.9 needs numpy<1.24 (it uses np.bool and friends), which the main .venv cannot have, so its
# tests run in this environment of their own.  Safe to run again: it only installs what is missing.
# MODELSAFE_MXNET_VENV chooses another directory (default: .venv-mxnet in the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${MODELSAFE_MXNET_VENV:-.venv-mxnet}

step() { echo "setup-mxnet: $*"; }

if [ ! -x "$VENV/bin/python" ]; then
    step "creating the virtual environment $VENV with $PY"
    "$PY" -m venv "$VENV"
fi
# numpy<1.24 as a constraint, so nothing (ml_dtypes, hypothesis) upgrades it past what MXNet runs with
echo "numpy<1.24" > "$VENV/constraints.txt"
step "installing numpy<1.24, mxnet 1.9.1, modelsafe (editable) and pytest, pytest-timeout, hypothesis"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -c "$VENV/constraints.txt" \
    "numpy<1.24" -e ".[mxnet]" "pytest>=7" "pytest-timeout>=2" "hypothesis>=6.80" 2>&1 | { grep -v "^WARNING: Location" || true; }
step "checking that modelsafe and mxnet import (MXNet's wheel needs libgomp and libquadmath from the system)"
"$VENV/bin/python" -c "import modelsafe, mxnet, hypothesis"
step "ready: $VENV/bin/python -m pytest tests/mxnet_adapter"
