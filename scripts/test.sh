#!/usr/bin/env bash
# Set everything up, then run the whole test suite (a bounded sample of the slow soak tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${MODELSAFE_VENV:-.venv}/bin/python" -m pytest -q tests "$@"
