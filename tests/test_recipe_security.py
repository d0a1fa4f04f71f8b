"""A file can name any callable; modelsafe must never import or call one that is not registered or trusted.

Hostile files are made from honest ones by rewriting the recipe names in their
manifests (re-sealed, so they pass every integrity check).  They are loaded in a
fresh interpreter with an audit hook that records imports, process launches and
code compilation; a payload that ran would also leave a sentinel file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import modelsafe as ms

from craft import edit_manifest, replace_tree_node


@ms.rebuildable(name="tests.security.Box")
class Box:
    def __init__(self, payload):
        self.payload = payload


@ms.rebuildable(name="tests.security.Net")
class Net(nn.Module):
    def __init__(self, width=3, act=nn.ReLU):
        super().__init__()
        self.fc = nn.Linear(width, width)
        self.act = act()


def _walk(node, visit):
    if isinstance(node, dict):
        visit(node)
        for v in list(node.values()):
            _walk(v, visit)
    elif isinstance(node, list):
        for v in node:
            _walk(v, visit)


def _retarget(path, *, name, args=None, where="recipe"):
    """Point every recipe (or class reference) in ``path`` at ``name`` with ``args``."""

    def edit(manifest):
        def visit(node):
            if where == "recipe" and isinstance(node.get("recipe"), dict):
                node["recipe"]["name"] = name
                if args is not None:
                    node["recipe"]["args"] = args
                    node["recipe"]["kwargs"] = []
            if where == "ref" and "ref" in node:
                node["ref"] = name

        _walk(manifest["tree"], visit)

    edit_manifest(path, edit)


HOSTILE_NAMES = [
    "os:system",
    "os.system",
    "subprocess:Popen",
    "subprocess:run",
    "builtins:eval",
    "builtins:exec",
    "builtins:__import__",
    "posix:system",
    "evil_payload_mod:Run",          # exists on sys.path; importing it writes the sentinel
    "evil_payload_mod.Run",
    "tests.security:Box.__init__.__globals__",
    "torch.nn:Linear.__init__.__globals__",
    "torch:load",                    # a real torch function, but not registered
    "torch.nn.modules.module:_global_forward_hooks",
]


def _commands(sentinel):
    return {
        "os:system": [f"touch {sentinel}"],
        "os.system": [f"touch {sentinel}"],
        "posix:system": [f"touch {sentinel}"],
        "subprocess:Popen": [["touch", str(sentinel)]],
        "subprocess:run": [["touch", str(sentinel)]],
        "builtins:eval": [f"open({str(sentinel)!r}, 'w')"],
        "builtins:exec": [f"open({str(sentinel)!r}, 'w')"],
        "builtins:__import__": ["evil_payload_mod"],
    }


def _hostile_files(tmp_path):
    sentinel = tmp_path / "SENTINEL"
    commands = _commands(sentinel)
    files = []
    for i, name in enumerate(HOSTILE_NAMES):
        args = commands.get(name, [f"touch {sentinel}"])
        for kind in ("plain", "module", "optimizer", "scheduler", "ref"):
            p = tmp_path / f"{i}-{kind}.safetensors"
            if kind == "plain":
                ms.save({"x": Box("hello")}, p)
                _retarget(p, name=name, args=args)
            elif kind == "module":
                ms.save({"model": Net()}, p)
                _retarget(p, name=name, args=args)
            elif kind == "optimizer":
                m = Net()
                ms.save({"optimizer": torch.optim.SGD(m.parameters(), lr=0.1)}, p)
                _retarget(p, name=name)
            elif kind == "scheduler":
                m = Net()
                opt = torch.optim.SGD(m.parameters(), lr=0.1)
                ms.save({"model": m, "optimizer": opt, "scheduler": torch.optim.lr_scheduler.StepLR(opt, 2)}, p)
                _retarget(p, name=name)
            else:
                ms.save({"model": Net(act=nn.GELU)}, p)
                _retarget(p, name=name, where="ref")
            files.append(str(p))
    return sentinel, files


RUNNER = textwrap.dedent(
    """
    import json, sys
    import torch, numpy, modelsafe as ms
    import torch.utils._device  # torch's own, imported lazily by torch.device("meta") as a context
    import modelsafe.adapters.torch, modelsafe.adapters.numpy, modelsafe.rng  # modelsafe's own, up front
    import tests_security_classes  # the honest classes, registered as in the writing process

    events = []
    WATCH = ("import", "os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
             "compile", "exec", "ctypes.dlopen")

    def hook(event, args):
        if event in WATCH:
            events.append([event, str(args[0])[:300] if args else ""])

    sys.addaudithook(hook)
    results = {}
    for path in json.loads(sys.argv[1]):
        try:
            ms.load(path)
            results[path] = "LOADED"
        except ms.UnknownClassError as exc:
            results[path] = "UnknownClassError:" + str(exc)
        except Exception as exc:
            results[path] = type(exc).__name__ + ":" + str(exc)
    print(json.dumps({"results": results, "events": events, "evil_imported": "evil_payload_mod" in sys.modules}))
    """
)

CLASSES = textwrap.dedent(
    """
    import torch
    from torch import nn
    import modelsafe as ms

    @ms.rebuildable(name="tests.security.Box")
    class Box:
        def __init__(self, payload):
            self.payload = payload

    @ms.rebuildable(name="tests.security.Net")
    class Net(nn.Module):
        def __init__(self, width=3, act=nn.ReLU):
            super().__init__()
            self.fc = nn.Linear(width, width)
            self.act = act()
    """
)


def _run(tmp_path, files, runner=RUNNER):
    (tmp_path / "evil_payload_mod.py").write_text(
        f"open({str(tmp_path / 'SENTINEL')!r}, 'w').write('imported')\nclass Run:\n    pass\n"
    )
    (tmp_path / "tests_security_classes.py").write_text(CLASSES)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run(
        [sys.executable, "-c", runner, json.dumps(files)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_hostile_recipe_names_are_refused_and_nothing_runs(tmp_path):
    sentinel, files = _hostile_files(tmp_path)
    report = _run(tmp_path, files)
    for path, outcome in report["results"].items():
        assert outcome.startswith("UnknownClassError:"), (path, outcome)
        assert "Nothing was imported or called" in outcome
    assert report["events"] == [], report["events"][:10]
    assert not report["evil_imported"]
    assert not sentinel.exists()


def test_the_audit_check_can_see_a_payload_run(tmp_path):
    """Control: the same harness notices an import when the caller trusts the module."""
    p = tmp_path / "trusted.safetensors"
    ms.save({"x": Box("hello")}, p)
    _retarget(p, name="evil_payload_mod:Run", args=[])
    runner = RUNNER.replace("ms.load(path)", "ms.load(path, trusted=['evil_payload_mod'])")
    report = _run(tmp_path, [str(p)], runner)
    assert list(report["results"].values()) == ["LOADED"]
    assert report["evil_imported"] and (tmp_path / "SENTINEL").exists()
    assert any(e[0] in ("import", "exec", "compile") and "evil_payload_mod" in e[1] for e in report["events"])


def test_trusted_names_only_the_modules_listed(tmp_path):
    p = tmp_path / "f.safetensors"
    ms.save({"x": Box("hello")}, p)
    _retarget(p, name="os:system", args=["true"])
    with pytest.raises(ms.UnknownClassError):
        ms.load(p, trusted=["evil_payload_mod", "o", "os.path"])


def test_dunder_paths_are_never_followed_even_in_trusted_modules(tmp_path):
    p = tmp_path / "f.safetensors"
    ms.save({"x": Box("hello")}, p)
    _retarget(p, name="tests.security:Box.__init__.__globals__", args=[])
    with pytest.raises(ms.UnknownClassError):
        ms.load(p, trusted=["tests.security"])


def test_error_names_the_class_and_what_to_do(tmp_path):
    p = tmp_path / "f.safetensors"
    ms.save({"x": Box("hello")}, p)
    _retarget(p, name="somewhere.else:Gadget", args=[])
    with pytest.raises(ms.UnknownClassError) as info:
        ms.load(p)
    msg = str(info.value)
    assert "somewhere.else:Gadget" in msg and "@ms.rebuildable" in msg and "trusted=" in msg
    assert info.value.key == "somewhere.else:Gadget" and info.value.path == str(p)


def test_unknown_object_kind_is_corruption_not_an_import(tmp_path):
    p = tmp_path / "f.safetensors"
    ms.save({"x": Box("hello")}, p)

    def edit(manifest):
        _walk(manifest["tree"], lambda n: n.update(object="os.system") if n.get("object") == "rebuildable" else None)

    edit_manifest(p, edit)
    with pytest.raises(ms.CorruptCheckpointError, match="os.system"):
        ms.load(p)


def test_numpy_bit_generator_names_come_from_a_fixed_list(tmp_path):
    import numpy as np

    p = tmp_path / "g.safetensors"
    ms.save({"g": np.random.default_rng(1)}, p)

    def edit(manifest):
        def visit(node):
            if node.get("object") == "numpy.generator":
                for pair in node["state"]["dict"]:
                    if pair[0] == "bit_generator":
                        pair[1] = "os"

        _walk(manifest["tree"], visit)

    edit_manifest(p, edit)
    with pytest.raises(ms.CorruptCheckpointError, match="bit generator"):
        ms.load(p)


# -- damaged object nodes: load or raise a ModelsafeError, never anything else ---------------------

from hypothesis import (  # noqa: E402
    HealthCheck,
    given,
    settings,
    strategies as st,  # noqa: E402
)

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**40) | st.floats(allow_nan=False) | st.sampled_from(
        ["torch.module", "torch.optimizer", "torch.lr_scheduler", "rebuildable", "tests.security.Net",
         "torch.nn.Linear", "torch.optim.SGD", "model.fc.weight", "os:system", ""]
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["tensor", "object", "object_ref", "id", "recipe", "name", "args", "kwargs", "state", "dict",
                         "params", "optimizer", "ref", "tuple", "float"]), inner, min_size=1, max_size=3),
    max_leaves=8,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _paths(v, prefix + (i,))


@pytest.fixture(scope="module")
def training_file(tmp_path_factory):
    import json as _json

    d = tmp_path_factory.mktemp("dmg")
    m = Net()
    opt = torch.optim.Adam(m.parameters(), lr=0.1)
    m.fc(torch.randn(2, 3)).sum().backward()
    opt.step()
    p = d / "base.safetensors"
    ms.save({"model": m, "optimizer": opt, "scheduler": torch.optim.lr_scheduler.StepLR(opt, 2), "box": Box([1])}, p)
    from craft import manifest_of

    tree = manifest_of(p)["tree"]
    return d, p, _json.dumps(tree), sorted(_paths(tree), key=len)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_damaged_object_nodes_load_or_raise_modelsafe_errors(training_file, data):
    import json as _json
    import shutil

    d, base, tree_text, paths = training_file
    where = data.draw(st.sampled_from(paths[1:]))
    value = data.draw(_JSON)
    p = d / "damaged.safetensors"
    shutil.copyfile(base, p)

    replace_tree_node(p, _json.loads(tree_text), where, value)
    try:
        ms.load(p)
    except ms.ModelsafeError:
        pass
