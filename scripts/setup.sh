#!/usr/bin/env bash
# Create .venv with modelsafe (editable) and everything the tests and demo need.
# Safe to run again: it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch is pinned for development: a CPU wheel of this version is what the test machines carry.
.venv/bin/python -m pip install -q --disable-pip-version-check \
    "torch==2.13.0" -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import modelsafe, torch, safetensors, hypothesis" 
