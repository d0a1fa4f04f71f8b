"""What ``trusted=`` grants, and that reading a file imports nothing the caller did not trust.

Trusting a package grants: import it, and construct classes *defined in* it with
arguments from the file.  It never grants functions, modules, or classes the package
merely imported (``from subprocess import Popen``), however the name is spelled.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest

import modelsafe as ms
from modelsafe.recipes import resolve

from craft import edit_manifest

PACKAGE = """
import os, subprocess
from subprocess import Popen
import json as the_json

SENTINEL = {sentinel!r}


def helper(*args):
    open(SENTINEL, "w").write("helper ran")


class Model:
    def __init__(self, *args):
        self.args = args

    inner = subprocess.Popen  # a class attribute that is another module's class

    class Nested:
        def __init__(self, *args):
            self.args = args

    method = helper
"""


@ms.rebuildable(name="tests.trust.Box", aliases=("tests.trust.OldBox",))
class Box:
    def __init__(self, payload):
        self.payload = payload


@pytest.fixture
def myproj(tmp_path, monkeypatch):
    """A package ``trustproj_<n>`` on sys.path (a fresh name per test: nothing cached between tests)."""
    name = f"trustproj_{abs(hash(str(tmp_path))) % 10**8}"
    pkg = tmp_path / name
    pkg.mkdir()
    sentinel = tmp_path / "SENTINEL"
    (pkg / "__init__.py").write_text(PACKAGE.format(sentinel=str(sentinel)))
    (pkg / "sub.py").write_text("from . import Model\nclass Local:\n    def __init__(self, *a):\n        self.a = a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name, sentinel
    for mod in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[mod]


def _box_file(tmp_path, name, args):
    p = tmp_path / f"box-{abs(hash(name))}.safetensors"
    ms.save({"x": Box("hello")}, p)

    def edit(manifest):
        recipe = manifest["tree"]["dict"][0][1]["recipe"]
        recipe.update(name=name, args=args, kwargs=[])

    edit_manifest(p, edit)
    return p


@pytest.mark.parametrize(
    "attr, args",
    [
        (":os.system", ["touch {sentinel}"]),
        (":subprocess.run", [["touch", "{sentinel}"]]),
        (":subprocess.Popen", [["touch", "{sentinel}"]]),
        (":Popen", [["touch", "{sentinel}"]]),             # imported into the package, defined elsewhere
        (":Model.inner", [["touch", "{sentinel}"]]),       # a class attribute naming another module's class
        (":helper", []),                                    # a function defined in the package
        (":Model.method", []),                              # a function reached through a class
        (":the_json.JSONDecoder", []),                      # a module the package imported
        (":os", []),
    ],
)
def test_trusting_a_package_grants_no_functions_modules_or_imported_classes(tmp_path, myproj, attr, args):
    name, sentinel = myproj
    args = json.loads(json.dumps(args).replace("{sentinel}", str(sentinel)))
    p = _box_file(tmp_path, name + attr, args)
    with pytest.raises(ms.UnknownClassError) as info:
        ms.load(p, trusted=[name])
    assert not sentinel.exists()
    assert "never functions" in str(info.value)  # the message says what trusting grants


def test_trusting_a_package_grants_the_classes_defined_in_it(tmp_path, myproj):
    name, _ = myproj
    for attr in (":Model", ":Model.Nested", ".sub:Local", ".sub:Model"):  # re-exported inside the package too
        back = ms.load(_box_file(tmp_path, name + attr, [1, 2]), trusted=[name])["x"]
        assert type(back).__qualname__ in ("Model", "Model.Nested", "Local") and type(back).__module__.startswith(name)


def test_untrusted_error_says_what_trusting_would_grant(tmp_path):
    p = _box_file(tmp_path, "somewhere.else:Gadget", [])
    with pytest.raises(ms.UnknownClassError, match=r"trusted=\[.*classes defined in it.*never functions"):
        ms.load(p)


@pytest.mark.parametrize(
    "name",
    [
        "tests.trust.Box.__init__",
        "tests.trust.Box:__init__",
        "tests.trust.OldBox.__init__.__globals__",
        f"{__name__}:Box.__init__",
        f"{__name__}:os.system",
        f"{__name__}:subprocess.run",
    ],
)
def test_registered_names_and_aliases_reach_only_what_was_registered(tmp_path, name):
    with pytest.raises(ms.UnknownClassError):
        ms.load(_box_file(tmp_path, name, ["true"]))
    assert type(ms.load(_box_file(tmp_path, "tests.trust.OldBox", [1]))["x"]) is Box


def test_resolve_reads_namespaces_without_running_module_getattr(monkeypatch):
    """A module's __getattr__ (how numpy and torch import submodules lazily) is never called."""
    import types

    calls = []
    mod = types.ModuleType("lazy_getattr_mod")
    mod.__getattr__ = lambda attr: calls.append(attr) or type(attr, (), {})
    monkeypatch.setitem(sys.modules, "lazy_getattr_mod", mod)
    with pytest.raises(ms.UnknownClassError):
        resolve("lazy_getattr_mod:Anything", trusted=["lazy_getattr_mod"])
    assert calls == []


# -- no imports for names in a file ------------------------------------------------------

LAZY_MODULES = ["torch._dynamo", "numpy.f2py", "numpy.testing", "numpy.distutils", "torch.testing._internal"]
NAMES = ["torch:_dynamo", "torch:_dynamo.config", "numpy:f2py", "numpy:testing", "numpy:testing.Tester",
         "numpy.testing:assert_equal", "torch.testing._internal:common_utils", "email.mime.text:MIMEText",
         "this:s", "antigravity:geohash"]


def _record_nodes():
    nodes = []
    for name in NAMES:
        nodes.append({"dataclass": name, "fields": [["x", 1]]})
        nodes.append({"namedtuple": name, "fields": ["x"], "items": [1]})
        nodes.append({"object": "rebuildable", "id": len(nodes), "class": name, "recipe": {"name": name, "args": [], "kwargs": []}})
        nodes.append({"ref": name})
    return nodes


RUNNER = textwrap.dedent(
    """
    import json, sys
    import torch, numpy, modelsafe as ms
    import torch.utils._device
    import modelsafe.adapters.torch, modelsafe.adapters.numpy, modelsafe.rng
    before = set(sys.modules)
    events = []
    sys.addaudithook(lambda event, args: events.append(str(args[0])) if event == "import" else None)
    outcomes = []
    for path in json.loads(sys.argv[1]):
        try:
            value = ms.load(path)["x"]
            outcomes.append("loaded " + type(value).__module__)
        except ms.ModelsafeError as exc:
            outcomes.append(type(exc).__name__)
    print(json.dumps({"events": events, "new": sorted(set(sys.modules) - before), "outcomes": outcomes}))
    """
)


def test_a_file_naming_lazy_submodules_imports_nothing(tmp_path):
    pytest.importorskip("torch")
    files = []
    for i, node in enumerate(_record_nodes()):
        p = tmp_path / f"{i}.safetensors"
        ms.save({"x": 1}, p)
        edit_manifest(p, lambda m, node=node: m.__setitem__("tree", {"dict": [["x", node]]}))
        files.append(str(p))
    out = subprocess.run([sys.executable, "-c", RUNNER, json.dumps(files)], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["events"] == [] and report["new"] == [], (report["events"][:20], report["new"][:20])
    # records come back as stand-ins defined nowhere the file named; recipes and refs are refused
    assert all(o in ("loaded types", "loaded modelsafe.tree", "UnknownClassError") for o in report["outcomes"]), report["outcomes"]


# -- stand-in record classes: one per type per load, and a bound --------------------------


def _tree_file(tmp_path, tree):
    p = tmp_path / "records.safetensors"
    ms.save({"x": 1}, p)
    edit_manifest(p, lambda m: m.__setitem__("tree", tree))
    return p


def test_many_records_of_one_unknown_type_make_one_class(tmp_path, monkeypatch):
    made = []
    real = dataclasses.make_dataclass
    monkeypatch.setattr(dataclasses, "make_dataclass", lambda *a, **k: made.append(a[0]) or real(*a, **k))
    nodes = [{"dataclass": "gone.module:Point", "fields": [["x", i], ["y", -i]]} for i in range(2000)]
    nodes += [{"namedtuple": "gone.module:Pair", "fields": ["a", "b"], "items": [i, i]} for i in range(2000)]
    back = ms.load(_tree_file(tmp_path, nodes))
    assert len({type(v) for v in back}) == 2 and made == ["Point"]
    assert back[5].x == 5 and back[5].y == -5 and back[2005].b == 5 and dataclasses.is_dataclass(back[0])


def test_distinct_stand_in_types_are_bounded(tmp_path):
    from modelsafe.tree import MAX_STAND_IN_TYPES

    nodes = [{"dataclass": "m:R", "fields": [[f"f{i}", i]]} for i in range(MAX_STAND_IN_TYPES + 1)]
    with pytest.raises(ms.CorruptCheckpointError, match="distinct record types"):
        ms.load(_tree_file(tmp_path, nodes))
    assert len(ms.load(_tree_file(tmp_path, nodes[:MAX_STAND_IN_TYPES]))) == MAX_STAND_IN_TYPES


@dataclasses.dataclass(frozen=True)
class Point:
    x: int = 0
    y: int = 0

    def __post_init__(self):
        raise AssertionError("class code ran during load")


def test_a_known_dataclass_comes_back_as_itself_without_running_its_code(tmp_path):
    back = ms.load(_tree_file(tmp_path, [{"dataclass": f"{__name__}:Point", "fields": [["x", 3], ["y", 4]]}]))
    assert type(back[0]) is Point and (back[0].x, back[0].y) == (3, 4)


def test_a_lazily_loaded_module_is_not_loaded_by_a_name_in_a_file(tmp_path, monkeypatch):
    """importlib's LazyLoader runs a module on its first attribute access; looking a name up must not be one."""
    import importlib.util

    sentinel = tmp_path / "LAZY_RAN"
    (tmp_path / "lazy_victim_mod.py").write_text(f"open({str(sentinel)!r}, 'w').close()\nclass Point:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = importlib.util.find_spec("lazy_victim_mod")
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "lazy_victim_mod", module)
    spec.loader.exec_module(module)
    back = ms.load(_tree_file(tmp_path, [{"dataclass": "lazy_victim_mod:Point", "fields": [["x", 1]]},
                                         {"namedtuple": "lazy_victim_mod:Point", "fields": ["x"], "items": [1]}]))
    assert back[0].x == 1 and back[1].x == 1
    assert not sentinel.exists()
