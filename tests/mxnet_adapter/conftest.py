"""MXNet tests run in their own virtual environment (.venv-mxnet, numpy<1.24), made by scripts/setup_mxnet.sh;
scripts/test.sh runs them there after the main suite (which skips this folder: see tests/conftest.py)."""
