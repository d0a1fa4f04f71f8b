"""What the package ships and promises: a license, type information, an sdist that can run
its own tests, dependency bounds that hold, and no extras for features that do not exist."""

from __future__ import annotations

import re
import shutil
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"

tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")


@pytest.fixture(scope="module")
def project() -> dict:
    return tomllib.loads(PYPROJECT.read_text())


def test_the_license_is_the_full_apache_2_text_and_declared_as_spdx(project):
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert project["project"]["license"] == "Apache-2.0"
    assert project["project"]["license-files"] == ["LICENSE"]
    setuptools_bound = [r for r in project["build-system"]["requires"] if r.startswith("setuptools")]
    assert setuptools_bound and _version(setuptools_bound[0]) >= (77,), "license strings need setuptools 77"


def test_the_package_is_typed(project):
    import modelsafe

    assert (Path(modelsafe.__file__).parent / "py.typed").exists()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["modelsafe"]


def test_ml_dtypes_bound_has_every_dtype_the_format_names(project):
    import ml_dtypes

    bound = next(d for d in project["project"]["dependencies"] if d.startswith("ml_dtypes"))
    assert _version(bound) >= (0, 5, 0), "float8_e8m0fnu first appeared in ml_dtypes 0.5.0"
    import numpy as np

    from modelsafe.format import dtypes

    for dtype in dtypes.BY_NAME.values():
        if dtype.numpy and not hasattr(np, dtype.numpy):
            assert hasattr(ml_dtypes, dtype.numpy), f"{dtype.numpy} missing from ml_dtypes {ml_dtypes.__version__}"


def test_every_extra_installs_only_what_the_code_uses(project):
    extras = project["project"]["optional-dependencies"]
    sources = "\n".join(p.read_text() for p in (ROOT / "src" / "modelsafe").rglob("*.py"))
    # s3fs is loaded by fsspec's registry for s3:// URLs (storage/remote.py imports fsspec)
    imports = {"torch": "torch", "matplotlib": "matplotlib", "h5py": "h5py", "s3fs": "fsspec"}
    for name, requirements in extras.items():
        if name in ("dev", "all"):
            continue
        for requirement in requirements:
            package = re.split(r"[<>=!\[ ;]", requirement, maxsplit=1)[0]
            module = imports.get(package, package)
            assert re.search(rf"^\s*(import|from) {module}\b", sources, flags=re.M), f"extra {name}: nothing imports {module}"


@pytest.mark.timeout(300)
def test_the_sdist_carries_the_tests_and_what_they_need(tmp_path):
    build_meta = pytest.importorskip("setuptools.build_meta")
    if not (ROOT / "MANIFEST.in").exists():
        pytest.fail("no MANIFEST.in: the sdist would leave out tests/, docs/ and examples/")
    tree = tmp_path / "tree"   # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT, tree, ignore=shutil.ignore_patterns(".git", ".venv*", "__pycache__", "build", "dist",
                                                               "*.egg-info", ".pytest_cache", ".hypothesis"))
    import contextlib
    import io
    import os

    previous = os.getcwd()
    os.chdir(tree)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            name = build_meta.build_sdist(str(tmp_path / "dist"))
    finally:
        os.chdir(previous)
    with tarfile.open(tmp_path / "dist" / name) as archive:
        members = {m.split("/", 1)[1] for m in archive.getnames() if "/" in m}
    tests = {p.relative_to(ROOT).as_posix() for p in (ROOT / "tests").rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert tests <= members, f"left out of the sdist: {sorted(tests - members)[:10]}"
    for needed in ("LICENSE", "README.md", "docs/format.md", "examples", "bench/bench_io.py", "scripts/setup.sh"):
        assert any(m == needed or m.startswith(needed + "/") for m in members), f"{needed} is not in the sdist"


def _version(requirement: str) -> tuple[int, ...]:
    found = re.search(r">=\s*([0-9][0-9.]*)", requirement)
    assert found, f"{requirement}: no lower bound"
    return tuple(int(x) for x in found.group(1).rstrip(".").split("."))
