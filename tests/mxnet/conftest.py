"""MXNet tests run in their own virtual environment (.venv-mxnet, numpy<1.24), made by scripts/setup_mxnet.sh."""

from __future__ import annotations

import pytest

mx = pytest.importorskip("mxnet")


def _wire() -> None:
    # until the core consumes Framework records: register through today's registries
    from modelsafe import adapters, objects
    from modelsafe.adapters import mxnet as fw

    if hasattr(adapters, "register_framework"):
        return

    adapters.register_adapter("mxnet", "modelsafe.adapters.mxnet", type_roots=["mxnet"])
    objects.register_codec_module("modelsafe.adapters.mxnet", type_roots=["mxnet"], kinds=["mxnet.block", "mxnet.trainer"])
    fw.register_builtins()


_wire()
