#!/usr/bin/env bash
# Create .venv with modelsafe (editable) and everything the tests and demo need.
# Safe to run again: it only installs what is missing.  One line per step says what it does;
# MODELSAFE_VENV chooses another environment directory (default: .venv in the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${MODELSAFE_VENV:-.venv}

step() { echo "setup: $*"; }

# pip, quiet, with one known noise line dropped; a failed install stops the set-up
pip_install() {
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
}

if [ ! -x "$VENV/bin/python" ]; then
    step "creating the virtual environment $VENV with $PY"
    "$PY" -m venv "$VENV"
fi
# torch is pinned for development: a CPU wheel of this version is what the test machines carry.
step "installing torch 2.13.0 (the largest part: several minutes on a first run)"
pip_install "torch==2.13.0"
step "installing modelsafe (editable) with the frameworks and tools its tests use: tensorflow-cpu, jax/flax/optax, lightning,"
step "  transformers, torchdata, s3fs + moto, pytest, hypothesis, safetensors, import-linter, ruff (several minutes on a first run)"
pip_install -e ".[dev]"
step "checking that modelsafe, torch, safetensors and hypothesis import"
"$VENV/bin/python" -c "import modelsafe, torch, safetensors, hypothesis"
step "ready: $VENV/bin/modelsafe demo; bash scripts/test.sh"
