"""The core names no framework: frameworks live behind adapters/ and its registry (issue 8)."""

from __future__ import annotations

import ast
import dataclasses
import json
import pathlib
import subprocess
import sys

import pytest

import modelsafe
from modelsafe.adapters import (
    framework_for_kind,
    framework_for_type,
    framework_named,
    imported_frameworks,
    known_frameworks,
    register_framework,
    unregister_framework,
)
from modelsafe.adapters.protocol import Framework, Lowering, rng_sources
from modelsafe.errors import FrameworkNotInstalledError

SRC = pathlib.Path(modelsafe.__file__).parent
FRAMEWORK_ROOTS = {"torch", "tensorflow", "keras", "jax", "jaxlib", "flax", "optax", "mxnet", "lightning", "transformers"}


def _core_modules() -> list[pathlib.Path]:
    # distributed/ is ms.distributed, modelsafe over torch.distributed.checkpoint: torch by definition
    outside = {"adapters", "integrations", "legacy", "distributed", "cli"}
    return [p for p in SRC.rglob("*.py") if not outside & set(p.relative_to(SRC).parts)]


def _imported_roots(path: pathlib.Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.partition(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("adapters."):
            roots.add("modelsafe." + node.module)  # a framework package reached from the core
    return roots


@pytest.mark.parametrize("path", _core_modules(), ids=lambda p: str(p.relative_to(SRC)))
def test_no_core_module_imports_a_framework_or_a_framework_package(path):
    roots = _imported_roots(path)
    assert not roots & FRAMEWORK_ROOTS, f"{path.name} imports {roots & FRAMEWORK_ROOTS}"
    assert not {r for r in roots if r.startswith("modelsafe.adapters.") and r != "modelsafe.adapters.protocol"}


def test_saving_and_loading_numpy_imports_no_framework(tmp_path):
    script = f"""
import json, sys, numpy as np, modelsafe as ms
from modelsafe.rng import RNGState
ms.save({{"w": np.arange(4.0), "rng": np.random.default_rng(3), "g": RNGState.capture()}}, {str(tmp_path / "a.safetensors")!r})
back = ms.load({str(tmp_path / "a.safetensors")!r})
target = {{"w": np.zeros(4)}}
ms.load_into(target, {str(tmp_path / "a.safetensors")!r}, strict=False)
ck = ms.Checkpoints({str(tmp_path / "ck")!r})
ck.save({{"w": np.ones(2)}}, step=1)
ck.load_into({{"w": np.zeros(2)}})
ck.close()
print(json.dumps(sorted(m for m in {sorted(FRAMEWORK_ROOTS)!r} if m in sys.modules)))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("name", known_frameworks())
def test_every_installed_framework_package_satisfies_the_protocol(name):
    try:
        fw = framework_named(name)
    except FrameworkNotInstalledError:
        pytest.skip(f"{name} is not installed here")
    assert isinstance(fw, Framework) and fw.name == name
    assert all(hasattr(fw.tensors, m) for m in ("framework", "handles", "describe", "host_bytes", "from_buffer"))
    for codec in fw.codecs:
        assert codec.kinds and all(framework_for_kind(kind) is fw for kind in codec.kinds)
        assert callable(codec.handles) and callable(codec.encode) and callable(codec.decode)
    for target in fw.load_targets:
        assert target.plan in ("module", "state", "rng", "tensor")
        assert all(callable(getattr(target, m)) for m in ("handles", "named_state", "unwrap", "conform", "assign"))
        assert isinstance(target.strip_prefixes, tuple) and isinstance(target.saved_kinds, tuple)
        assert all(framework_for_kind(kind) is fw for kind in target.saved_kinds)
    for source in rng_sources(fw):
        assert isinstance(source.name, str) and callable(source.capture) and callable(source.restore)
    assert all(isinstance(lw, Lowering) for lw in fw.lowerings)
    assert fw.snapshot is None or callable(fw.snapshot)
    assert fw.register_builtins is None or callable(fw.register_builtins)


def test_lookups_by_type_and_kind():
    np = pytest.importorskip("numpy")
    assert framework_for_type(np.ndarray).name == "numpy"
    assert framework_for_type(dict) is None
    assert framework_for_kind("numpy.generator").name == "numpy"
    assert framework_for_kind("nothing.here") is None
    assert "numpy" in [f.name for f in imported_frameworks()]


def test_a_missing_framework_names_its_extra():
    register_framework("nosuchfw", "modelsafe.adapters.nosuchfw", type_roots=("nosuchfw",),
                       kind_prefixes=("nosuchfw.",), extra="nosuchfw")
    try:
        with pytest.raises(FrameworkNotInstalledError, match=r"pip install 'modelsafe\[nosuchfw\]'"):
            framework_named("nosuchfw")
        with pytest.raises(FrameworkNotInstalledError, match="nosuchfw"):
            framework_for_kind("nosuchfw.module")
    finally:
        unregister_framework("nosuchfw")


def test_a_registered_framework_reaches_the_core(tmp_path):
    """A new framework is a package and one register_framework line: its tensors save and load."""
    np = pytest.importorskip("numpy")
    pkg = tmp_path / "toyfw"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("class Box:\n    def __init__(self, a):\n        self.a = a\n")
    (tmp_path / "toyfw_adapter.py").write_text(
        "import numpy as np, dataclasses\n"
        "from modelsafe.adapters.numpy import FRAMEWORK as NP\n"
        "import toyfw\n"
        "class Tensors:\n"
        "    framework = 'toyfw'\n"
        "    def handles(self, tp): return issubclass(tp, toyfw.Box)\n"
        "    def describe(self, obj): return NP.tensors.describe(obj.a)\n"
        "    def host_bytes(self, obj): return NP.tensors.host_bytes(obj.a)\n"
        "    def from_buffer(self, base, specs, options): return [toyfw.Box(a) for a in NP.tensors.from_buffer(base, specs, options)]\n"
        "FRAMEWORK = dataclasses.replace(NP, name='toyfw', tensors=Tensors(), codecs=(), load_targets=(), rng=None, snapshot=None)\n"
    )
    sys.path.insert(0, str(tmp_path))
    register_framework("toyfw", "toyfw_adapter", type_roots=("toyfw",), kind_prefixes=("toyfw.",))
    try:
        import toyfw

        import modelsafe as ms

        ms.save({"b": toyfw.Box(np.arange(3))}, tmp_path / "t.safetensors")
        back = ms.load(tmp_path / "t.safetensors")["b"]
        assert type(back) is toyfw.Box and back.a.tolist() == [0, 1, 2]
        assert ms.load(tmp_path / "t.safetensors", framework="numpy")["b"].tolist() == [0, 1, 2]
    finally:
        sys.path.remove(str(tmp_path))
        unregister_framework("toyfw")


def test_framework_records_are_frozen():
    fw = framework_named("numpy")
    with pytest.raises(dataclasses.FrozenInstanceError):
        fw.name = "other"


def _relative_imports(name: str) -> set[str]:
    """The modelsafe modules ``name``.py imports anywhere in it (``from .objects import x`` -> "objects")."""
    found = set()
    for node in ast.walk(ast.parse((SRC / f"{name}.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add(node.module or next(a.name for a in node.names))
    return found


def test_tree_objects_recipes_import_no_circle():
    """tree is the mechanism, objects builds on tree and recipes, recipes is a pure registry."""
    assert "objects" not in _relative_imports("tree")
    assert not {"objects", "tree"} & _relative_imports("recipes")
    assert "sys.modules" not in (SRC / "objects.py").read_text()
    assert "modelsafe.objects" not in (SRC / "recipes.py").read_text()


def test_registering_a_class_after_it_was_met_makes_it_storable(tmp_path):
    """objects' per-type cache follows recipes' generation counter (no reach-in from recipes)."""
    import modelsafe as ms
    from modelsafe.recipes import generation

    class Late:
        pass

    with pytest.raises(ms.UnsupportedObjectError):
        ms.save({"x": Late()}, tmp_path / "a.safetensors")
    before = generation()
    ms.register(Late, name="tests.framework_neutral.Late")
    late = ms.build(Late)
    assert generation() > before
    ms.save({"x": late}, tmp_path / "a.safetensors")
    assert type(ms.load(tmp_path / "a.safetensors")["x"]) is Late
