"""Every docstring example in the package runs and prints what it says."""

import doctest
import importlib
import pkgutil

import pytest

import modelsafe
from modelsafe.adapters import framework_named, known_frameworks
from modelsafe.errors import FrameworkNotInstalledError


def _installed(name: str) -> bool:
    """False for the package of a framework this environment lacks (mxnet runs in .venv-mxnet)."""
    parts = name.split(".")
    if len(parts) < 3 or parts[1] != "adapters" or parts[2] not in known_frameworks():
        return True
    try:
        framework_named(parts[2])
    except FrameworkNotInstalledError:
        return False
    return True


def module_names() -> list[str]:
    names = ["modelsafe"]
    for info in pkgutil.walk_packages(modelsafe.__path__, "modelsafe."):
        if info.name.endswith("__main__") or not _installed(info.name):
            continue
        names.append(info.name)
    return names


@pytest.mark.parametrize("name", module_names())
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = importlib.import_module(name)  # the dev set-up installs every optional framework used
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
