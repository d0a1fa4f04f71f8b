"""Recipes: @rebuildable, build, register with aliases, resolution, built-in registrations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, strategies as st

import modelsafe as ms
from modelsafe import recipes
from modelsafe.recipes import Recipe, lookup, recipe_of, registered_name, resolve


@ms.rebuildable
class Point:
    def __init__(self, x, y=0, *rest, label="p", **extra):
        self.x, self.y, self.rest, self.label, self.extra = x, y, rest, label, extra


@ms.rebuildable(name="tests.recipes.Base")
class Base:
    def __init__(self, a):
        self.a = a


@ms.rebuildable(name="tests.recipes.Child")
class Child(Base):
    def __init__(self, a, b):
        super().__init__(a)
        self.b = b


class Undecorated(Base):
    pass


def test_rebuildable_records_the_arguments_as_given():
    p = Point(1, 2, 3, label="q", z=9)
    r = recipe_of(p)
    assert r == Recipe(Point, (1, 2, 3), {"label": "q", "z": 9})
    assert r.name == "tests.test_recipes:Point" or r.name.endswith(":Point")


def test_subclass_records_its_own_recipe_and_undecorated_subclasses_none():
    assert recipe_of(Child(1, 2)) == Recipe(Child, (1, 2), {})
    assert recipe_of(Undecorated(5)) is None  # not registered, so no recipe that could not resolve


def test_decorating_twice_does_not_wrap_twice():
    ms.rebuildable(Base, name="tests.recipes.Base")
    assert recipe_of(Base(3)) == Recipe(Base, (3,), {})


def test_decorator_rejects_functions():
    with pytest.raises(TypeError, match="ms.register"):
        ms.rebuildable(lambda: None)


def test_register_names_aliases_and_qualified_name():
    class Gadget:
        pass

    ms.register(Gadget, name="tests.recipes.Gadget", aliases="old.place:Gadget")  # a single alias as a str
    assert lookup("tests.recipes.Gadget") is Gadget
    assert lookup("old.place:Gadget") is Gadget
    assert lookup(recipes.qualified_name(Gadget)) is Gadget
    assert registered_name(Gadget) == "tests.recipes.Gadget"
    with pytest.raises(TypeError):
        ms.register(42)


def test_registering_after_a_failed_save_makes_it_saveable(tmp_path):
    class Late:
        def __init__(self, n):
            self.n = n

    with pytest.raises(ms.UnsupportedObjectError):
        ms.save(Late(1), tmp_path / "a.safetensors")
    ms.register(Late, name="tests.recipes.Late")
    with pytest.raises(ms.UnsupportedObjectError, match="ms.build"):
        ms.save(Late(1), tmp_path / "a.safetensors")  # registered, but this instance has no recipe
    ms.save(ms.build(Late, 2), tmp_path / "a.safetensors")
    assert ms.load(tmp_path / "a.safetensors").n == 2


def test_build_records_recipes_of_undecorated_classes_and_factories():
    import collections

    c = ms.build(collections.OrderedDict, [("a", 1)])
    assert recipe_of(c) == Recipe(collections.OrderedDict, ([("a", 1)],), {})

    def make_point(n):
        return Point(n, n)

    ms.register(make_point, name="tests.recipes.make_point")
    p = ms.build(make_point, 4)
    assert recipe_of(p).target is make_point and recipe_of(p).name == "tests.recipes.make_point"


def test_plain_rebuildable_objects_round_trip(tmp_path):
    p = tmp_path / "p.safetensors"
    ms.save({"p": Point(1.5, [1, 2], "r", label="x", z=(1, 2))}, p)
    back = ms.load(p)["p"]
    assert isinstance(back, Point)
    assert (back.x, back.y, back.rest, back.label, back.extra) == (1.5, [1, 2], ("r",), "x", {"z": (1, 2)})
    assert recipe_of(back) == recipe_of(Point(1.5, [1, 2], "r", label="x", z=(1, 2)))


@given(
    args=st.lists(
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
            lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
            max_leaves=6,
        ),
        max_size=3,
    )
)
def test_json_arguments_round_trip(tmp_path_factory, args):
    p = tmp_path_factory.mktemp("r") / "p.safetensors"
    ms.save(Point(*args) if args else Point(None), p)
    back = ms.load(p)
    assert recipe_of(back).args == (tuple(args) if args else (None,))


def test_shared_rebuildable_objects_stay_shared(tmp_path):
    shared = Point(1)
    p = tmp_path / "s.safetensors"
    ms.save({"a": shared, "b": [shared], "c": Point(1)}, p)
    back = ms.load(p)
    assert back["a"] is back["b"][0] and back["c"] is not back["a"]


def test_registered_classes_as_argument_values(tmp_path):
    p = tmp_path / "c.safetensors"
    ms.save(Point(Base), p)
    assert ms.load(p).x is Base

    class Local:
        pass

    with pytest.raises(ms.UnsupportedObjectError, match="'x'"):
        ms.save(Point(Local), tmp_path / "d.safetensors")


def test_unstorable_argument_error_names_argument_class_and_path(tmp_path):
    with pytest.raises(ms.UnsupportedObjectError) as info:
        ms.save({"cfg": [Point(1, label=open)]}, tmp_path / "x.safetensors")
    msg = str(info.value)
    assert "'label'" in msg and "Point" in msg and 'obj["cfg"][0]' in msg
    with pytest.raises(ms.UnsupportedObjectError, match=r"'\*rest\[1\]'"):
        ms.save(Point(1, 2, 3, object()), tmp_path / "y.safetensors")


def test_resolve_never_imports_untrusted_modules():
    assert "json.tool" not in sys.modules
    with pytest.raises(ms.UnknownClassError):
        resolve("json.tool:main")
    assert "json.tool" not in sys.modules
    with pytest.raises(ms.UnknownClassError):
        resolve("json.tool:main", trusted=["json"])  # imported now, but trusting grants classes, never functions
    assert "json.tool" in sys.modules
    import json.decoder

    assert resolve("json.decoder:JSONDecoder", trusted=["json"]) is json.decoder.JSONDecoder  # a trusted parent covers it
    with pytest.raises(ms.UnknownClassError):
        resolve("json:__loader__", trusted=["json"])  # no dunder paths


def test_builtin_torch_names_resolve_lazily():
    torch = pytest.importorskip("torch")
    assert lookup("torch.nn.Linear") is torch.nn.Linear
    assert lookup("torch.nn.modules.linear:Linear") is torch.nn.Linear
    assert lookup("torch.optim.AdamW") is torch.optim.AdamW
    assert lookup("torch.optim.lr_scheduler.OneCycleLR") is torch.optim.lr_scheduler.OneCycleLR
    assert lookup("torch.amp.GradScaler") is torch.amp.GradScaler
    assert lookup("torch:load") is None and lookup("torch.nn.functional:relu") is None


def _run(code: str, cwd, *paths) -> str:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([*map(str, paths), os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=cwd, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_import_modelsafe_imports_no_framework(tmp_path):
    out = _run(
        """
        import sys, modelsafe as ms
        ms.rebuildable, ms.build, ms.register, ms.load_into, ms.LoadReport
        print(sorted(m for m in ("torch", "jax", "tensorflow", "mxnet") if m in sys.modules))
        """,
        tmp_path,
    )
    assert out == "[]"


def test_a_class_moved_to_another_module_keeps_old_files_loadable(tmp_path):
    """Save with the class in old_home; later it lives in new_home, renamed, with an alias."""
    (tmp_path / "old_home.py").write_text(textwrap.dedent(
        """
        import modelsafe as ms
        @ms.rebuildable
        class Widget:
            def __init__(self, size, *, color="red"):
                self.size, self.color = size, color
        """
    ))
    (tmp_path / "new_home.py").write_text(textwrap.dedent(
        """
        import modelsafe as ms
        @ms.rebuildable(name="shop.Gizmo", aliases=("old_home:Widget",))
        class Gizmo:
            def __init__(self, size, *, color="red"):
                self.size, self.color = size, color
        """
    ))
    f = tmp_path / "w.safetensors"
    _run(f"import modelsafe as ms, old_home\nms.save({{'w': old_home.Widget(3, color='blue')}}, {str(f)!r})", tmp_path, tmp_path)
    (tmp_path / "old_home.py").unlink()
    out = _run(
        f"""
        import modelsafe as ms, new_home
        w = ms.load({str(f)!r})["w"]
        print(type(w).__name__, w.size, w.color)
        """,
        tmp_path, tmp_path,
    )
    assert out == "Gizmo 3 blue"
    # without the alias the old name is unknown, and says so
    out = _run(
        f"""
        import modelsafe as ms
        try:
            ms.load({str(f)!r})
        except ms.UnknownClassError as e:
            print("unknown", e.key)
        """,
        tmp_path, tmp_path,
    )
    assert out == "unknown old_home:Widget"


def test_a_moved_torch_module_keeps_loading(tmp_path):
    pytest.importorskip("torch")
    (tmp_path / "v1.py").write_text(textwrap.dedent(
        """
        import torch, modelsafe as ms
        @ms.rebuildable(name="zoo.Net")
        class Net(torch.nn.Module):
            def __init__(self, width):
                super().__init__()
                self.fc = torch.nn.Linear(width, 2)
        """
    ))
    (tmp_path / "v2.py").write_text((tmp_path / "v1.py").read_text().replace('name="zoo.Net"', 'name="zoo.models.Net", aliases=("zoo.Net",)'))
    f = tmp_path / "n.safetensors"
    _run(f"import torch, modelsafe as ms, v1\ntorch.manual_seed(0)\nms.save(v1.Net(5), {str(f)!r})", tmp_path, tmp_path)
    out = _run(
        f"""
        import torch, modelsafe as ms, v2
        torch.manual_seed(0)
        ref = torch.nn.Linear(5, 2)
        n = ms.load({str(f)!r})
        print(type(n).__module__, torch.equal(n.fc.weight, ref.weight))
        """,
        tmp_path, tmp_path,
    )
    assert out == "v2 True"
    # a stable name that is no module path still loads with trusted= naming the class's module
    (tmp_path / "v2.py").unlink()
    out = _run(f"import modelsafe as ms\nprint(type(ms.load({str(f)!r}, trusted=['v1'])).__module__)", tmp_path, tmp_path)
    assert out == "v1"


def test_manifest_keeps_recipes_as_json(tmp_path):
    p = tmp_path / "p.safetensors"
    ms.save(Point(1, label="x"), p)
    with ms.open(p) as r:
        text = json.dumps(r.manifest["tree"])
    assert '"recipe"' in text and '"label"' in text and "pickle" not in text


def test_builtin_classes_as_arguments_register_lazily(tmp_path):
    pytest.importorskip("torch")
    out = _run(
        f"""
        import sys, modelsafe as ms, torch.nn as nn

        @ms.rebuildable(name="tests.recipes.Cfg")
        class Cfg:
            def __init__(self, act):
                self.act = act

        assert "modelsafe.adapters.torch" not in sys.modules  # nothing torch-specific loaded yet
        ms.save(Cfg(nn.GELU), {str(tmp_path / 'c.safetensors')!r})
        print(ms.load({str(tmp_path / 'c.safetensors')!r}).act.__name__)
        """,
        tmp_path,
    )
    assert out == "GELU"
