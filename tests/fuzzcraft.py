"""Deterministic hostile inputs for the fuzz harness (tests/fuzzrun.py, scripts/fuzz.py).

Every case is made from honest base files (a torch state_dict, a file of framework
objects with recipes, a numpy file, a checkpoint run) and a case number: the random
choices come from ``random.Random(f"{kind}:{seed}:{index}")`` alone, so a failing case
is rebuilt exactly from its kind, seed and index (``python scripts/fuzz.py --case``).

Two kinds of cases:

* ``manifest``: a crafted manifest, resealed so it passes every integrity check: tree
  nodes, tensor entries, tensor attrs, aliases, recipes, user metadata, header entries,
  the run file and checkpoint manifests (``FAMILIES``).
* ``resource``: small honest-looking files that ask for much (a recipe of a huge module,
  with or without state; thousands of dataclass stand-ins).
* ``mutation``: byte-level damage (bit flips, interesting bytes, cut, spliced and
  duplicated ranges, JSON tokens replaced) to a file, a shard, a checkpoint manifest or
  the run file, then, for headers, usually resealed so the damage reaches the parser.

Files name *canaries*: modules and callables that leave a trace file when imported or
called (``canary_sources``), so a file that got code run is seen even when the load
then fails.
"""

from __future__ import annotations

import collections
import json
import os
import random
import re
import shutil
import struct
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

import modelsafe as ms
from modelsafe.format.container import MANIFEST_KEY, reseal

from craft import raw_file, read_parts

RUN_FILE = ".modelsafe-run.json"
TRUSTED_MODULE = "fuzz_trusted"           # the module the "load_trusted" operation trusts
CANARY_IMPORT_MODULE = "fuzz_canary_mod"  # importing it leaves a trace
CANARY_CLASSES_MODULE = "fuzz_canary_classes"  # imported before the cases: its code leaves traces when called
# modules a file may name whose import would show (they are not imported by honest loads)
WATCHED_MODULES = (CANARY_IMPORT_MODULE, "numpy.testing", "numpy.f2py", "torch._dynamo", "http.server", "pdb")


# -- honest objects the bases hold (registered here, so the child process knows them too) ---------

Point = collections.namedtuple("Point", "a b")


@dataclass
class Pair:
    x: Any
    y: Any


def _torch():
    import torch

    return torch


def _define_net():
    torch = _torch()
    nn = torch.nn

    @ms.rebuildable(name="fuzz.Net")
    class FuzzNet(nn.Module):
        def __init__(self, width=3, act=nn.ReLU):
            super().__init__()
            self.fc = nn.Linear(width, width)
            self.emb = nn.Embedding(4, width)
            self.out = nn.Linear(width, 4, bias=False)
            self.out.weight = self.emb.weight  # tied: stored once, an alias in the manifest
            self.act = act()

    return FuzzNet


_NET: list = []


def fuzz_net(**kwargs) -> Any:
    """A FuzzNet (defined and registered on first use: importing this module imports no torch)."""
    if not _NET:
        _NET.append(_define_net())
    return _NET[0](**kwargs)


def small_module() -> Any:
    """The module the "state" base holds the state_dict of (load_into targets are fresh copies)."""
    torch = _torch()
    torch.manual_seed(0)
    nn = torch.nn
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def objects_state() -> dict:
    """Framework objects with recipes, refs and object refs: a model, optimizer, scheduler, RNGs."""
    torch = _torch()
    torch.manual_seed(1)
    model = fuzz_net(act=torch.nn.GELU)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model.fc(torch.randn(2, 3)).sum().backward()
    opt.step()
    return {
        "model": model, "optimizer": opt, "scheduler": torch.optim.lr_scheduler.StepLR(opt, 2),
        "rng": random.Random(7), "gen": np.random.default_rng(7), "point": Point(1, np.arange(3)),
        "pair": Pair(x=1, y="z"), "blob": b"\x00payload", "big": 2**70, "nan": float("nan"), "t": (1, 2.5),
        "s": {1, 2}, "ik": {3: "x"}, "half": torch.arange(4, dtype=torch.bfloat16),
        "c": np.arange(3, dtype=np.complex128), "scalar": np.float32(1.5), "ct": collections.Counter("aab"),
    }


def numpy_state() -> dict:
    grid = np.arange(24, dtype=np.float64).reshape(4, 6)
    return {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "i": np.array([1, -2, 3], np.int16),
            "m": np.array([True, False]), "e": np.zeros((0, 3), np.float32), "z": np.array(5, np.int64),
            "v": grid[:, ::2], "u": np.arange(4, dtype=np.uint8)}


def run_state(step: int) -> dict:
    module = small_module()
    return {"model": module.state_dict(), "epoch": step, "note": f"step {step}"}


@dataclass(frozen=True)
class Bases:
    """Paths of the honest files every case starts from."""

    directory: str
    files: dict[str, str]   # base name -> single file
    run: str                # a checkpoint run with three checkpoints


SINGLE_BASES = ("state", "objects", "numpy")


def make_bases(directory: str) -> Bases:
    """Write the honest base files into ``directory`` (deterministic contents but for run ids and times)."""
    os.makedirs(directory, exist_ok=True)
    files = {name: os.path.join(directory, f"{name}.safetensors") for name in SINGLE_BASES}
    ms.save(small_module().state_dict(), files["state"])
    ms.save(objects_state(), files["objects"], metadata={"run": "fuzz", "n": 3, "tags": ["a", "b"]})
    ms.save(numpy_state(), files["numpy"])
    run = os.path.join(directory, "run")
    shutil.rmtree(run, ignore_errors=True)
    ck = ms.Checkpoints(run, keep_last=3, monitor="loss", name="step{step:03d}")
    for step, loss in enumerate((0.9, 0.5, 0.7)):
        ck.save(run_state(step), step=step, metrics={"loss": loss, "acc": 1 - loss}, metadata={"step": step})
    ck.close()
    return Bases(directory, files, run)


# -- canaries -------------------------------------------------------------------------------------

def canary_sources(trace_dir: str) -> dict[str, str]:
    """Module sources (name -> text) put on the child's sys.path: each leaves a file in ``trace_dir``."""
    trace = f"def _trace(what):\n    open(__import__('os').path.join({trace_dir!r}, what), 'w').close()\n"
    return {
        CANARY_IMPORT_MODULE: trace + "_trace('imported-" + CANARY_IMPORT_MODULE + "')\nclass Run:\n    pass\n"
                                      "def run(*a, **k):\n    _trace('called-run')\n",
        CANARY_CLASSES_MODULE: trace + (
            "import collections, dataclasses\n"
            "class Trap:\n    def __init__(self, *a, **k):\n        _trace('Trap.__init__')\n"
            "    def __setstate__(self, state):\n        _trace('Trap.__setstate__')\n"
            "def touch(*a, **k):\n    _trace('touch')\n"
            "@dataclasses.dataclass\nclass TrapData:\n    x: object = None\n    y: object = None\n"
            "    def __post_init__(self):\n        _trace('TrapData.__post_init__')\n"
            "    def __setattr__(self, name, value):\n        _trace('TrapData.__setattr__')\n"
            "class TrapTuple(collections.namedtuple('TrapTuple', 'a b')):\n"
            "    def __new__(cls, *a, **k):\n        _trace('TrapTuple.__new__')\n        return super().__new__(cls, *a, **k)\n"
            "    def __getattribute__(self, name):\n        if name == '_fields':\n            _trace('TrapTuple._fields')\n"
            "        return super().__getattribute__(name)\n"
        ),
        # what a caller trusts: honest classes defined here, and names it merely imported (never granted)
        TRUSTED_MODULE: trace + (
            "import os, subprocess\n"
            f"from {CANARY_CLASSES_MODULE} import Trap as ImportedTrap, touch as imported_touch\n"
            "class Honest:\n    def __init__(self, *a, **k):\n        self.a, self.k = a, k\n"
            "def make(*a, **k):\n    _trace('trusted-function-make')\n"
        ),
    }


def canary_names(trace_dir: str) -> list[tuple[str, list]]:
    """(callable name, positional args) a file may name; each call, or each import, leaves a trace."""
    touch = lambda what: f"touch {os.path.join(trace_dir, what)}"  # noqa: E731
    write = lambda what: f"open({os.path.join(trace_dir, what)!r}, 'w').close()"  # noqa: E731
    return [
        ("os:system", [touch("os.system")]), ("os.system", [touch("os.system")]), ("posix:system", [touch("posix.system")]),
        ("subprocess:run", [["touch", os.path.join(trace_dir, "subprocess.run")]]),
        ("subprocess:Popen", [["touch", os.path.join(trace_dir, "subprocess.Popen")]]),
        ("builtins:exec", [write("exec")]), ("builtins:eval", [write("eval")]),
        ("builtins:__import__", [CANARY_IMPORT_MODULE]), ("importlib:import_module", [CANARY_IMPORT_MODULE]),
        (f"{CANARY_IMPORT_MODULE}:Run", []), (f"{CANARY_IMPORT_MODULE}:run", []), (f"{CANARY_IMPORT_MODULE}.Run", []),
        (f"{CANARY_CLASSES_MODULE}:Trap", []), (f"{CANARY_CLASSES_MODULE}:touch", []),
        (f"{CANARY_CLASSES_MODULE}:TrapData", []), (f"{CANARY_CLASSES_MODULE}:TrapTuple", [1, 2]),
        (f"{TRUSTED_MODULE}:os.system", [touch("trusted-os.system")]),
        (f"{TRUSTED_MODULE}:subprocess.run", [["touch", os.path.join(trace_dir, "trusted-subprocess.run")]]),
        (f"{TRUSTED_MODULE}:make", []), (f"{TRUSTED_MODULE}:ImportedTrap", []), (f"{TRUSTED_MODULE}:imported_touch", []),
        (f"{TRUSTED_MODULE}:Honest.__init__.__globals__", []), (f"{TRUSTED_MODULE}:Honest", [1]),
        ("numpy:testing", []), ("numpy:f2py", []), ("torch:_dynamo", []), ("http.server:test", []), ("pdb:set_trace", []),
        ("torch:load", [os.path.join(trace_dir, "x")]), ("torch.nn:Linear.__init__.__globals__", []),
        ("fuzz.Net", []), ("torch.nn.Linear", [3, 3]), ("torch.nn.Linear", [20000, 20000]),
        ("torch.nn.Embedding", [2**31, 2**20]), ("torch.optim.SGD", []), ("torch.nn.GELU", []),
    ]


# -- hostile JSON values --------------------------------------------------------------------------

TREE_TAGS = ("int", "float", "tuple", "dict", "set", "frozenset", "tensor", "bytes", "pickle", "namedtuple",
             "dataclass", "object", "object_ref", "ref", "counter")
FIELD_WORDS = ("type", "fields", "items", "_metadata", "class", "id", "path", "recipe", "name", "args", "kwargs",
               "state", "params", "optimizer", "training", "attrs", "xxh3", "kind", "dtype", "shape", "file")
OBJECT_KINDS = ("torch.module", "torch.optimizer", "torch.lr_scheduler", "torch.grad_scaler", "torch.generator",
                "python.random", "numpy.generator", "numpy.random_state", "modelsafe.rng_state", "rebuildable",
                "os.system", "torch", "")
DEVICES = ("cpu", "cuda:0", "cuda", "cuda:99", "hpu", "lazy", "bogus", "meta", "mps", "xla", "xpu", "ipu", "cpu:0",
           "privateuseone", "", "cpu:-1", "cuda:-5", "vulkan", "mkldnn")
INTERESTING_INTS = (0, 1, -1, 2, 3, 7, 255, 2**31 - 1, 2**31, 2**32, 2**53, 2**53 + 1, 2**63 - 1, 2**63, 2**64,
                    -(2**63), 10**30, -(10**30))
INTERESTING_STRINGS = ("", "a", "x", "nan", "inf", "-inf", "1e400", "../x", "../../etc/passwd", "/etc/passwd",
                       "files/../../x", "state-00001-of-00001.safetensors", "manifest.json", "__metadata__",
                       "model.fc.weight", "model.emb.weight", "w", "\u0000", "\ud800", "é" * 3, "a" * 300, "#2",
                       "obj", "latest", "best", "torch", "numpy", "F32", "float32", "U8", "OrderedDict", "bytearray")


class Gen:
    """Random hostile JSON values built from one ``random.Random``."""

    def __init__(self, rng: random.Random, names: list[tuple[str, list]], tensor_names: list[str]) -> None:
        self.rng = rng
        self.names = names
        self.tensor_names = tensor_names or ["x"]

    def pick(self, seq):
        return self.rng.choice(seq)

    def leaf(self) -> Any:
        r = self.rng.random()
        if r < 0.12:
            return None
        if r < 0.22:
            return self.rng.random() < 0.5
        if r < 0.45:
            return self.pick(INTERESTING_INTS)
        if r < 0.52:
            return self.pick((0.5, -0.0, 1e308, -1e308, 3.0, 1e-320))
        if r < 0.70:
            return self.pick(INTERESTING_STRINGS)
        if r < 0.82:
            return self.pick(self.tensor_names)
        if r < 0.90:
            return self.pick(self.names)[0]
        return self.pick(OBJECT_KINDS + TREE_TAGS + DEVICES)

    def value(self, depth: int = 3) -> Any:
        """A JSON value: leaves, lists, objects with tag and field keys, tree nodes."""
        r = self.rng.random()
        if depth <= 0 or r < 0.35:
            return self.leaf()
        if r < 0.50:
            return [self.value(depth - 1) for _ in range(self.rng.randint(0, 4))]
        if r < 0.75:
            return self.node(depth - 1)
        keys = TREE_TAGS + FIELD_WORDS
        return {self.pick(keys): self.value(depth - 1) for _ in range(self.rng.randint(1, 4))}

    def node(self, depth: int = 2) -> Any:
        """A tree node that looks almost right: a known tag with a plausible or hostile body."""
        tag = self.pick(TREE_TAGS)
        v = lambda: self.value(depth - 1)  # noqa: E731
        if tag == "dict":
            pairs = [[self.value(0) if self.rng.random() < 0.3 else self.pick(("a", 0, "w")), v()]
                     for _ in range(self.rng.randint(0, 3))]
            body: dict = {"dict": pairs if self.rng.random() < 0.85 else v()}
            if self.rng.random() < 0.3:
                body["type"] = self.pick(("OrderedDict", "defaultdict", "", None, 3, "os:system"))
            if self.rng.random() < 0.2:
                body["_metadata"] = v()
            return body
        if tag in ("tensor", "bytes", "pickle"):
            body = {tag: self.pick(self.tensor_names) if self.rng.random() < 0.6 else self.leaf()}
            if self.rng.random() < 0.3:
                body["type"] = self.pick(("bytearray", "os.system", "builtins.eval", None, 1))
            return body
        if tag in ("namedtuple", "dataclass"):
            name, _ = self.pick(self.names) if self.rng.random() < 0.7 else (self.leaf(), [])
            fields = [[self.pick(("a", "b", "x", "y", "__class__", "__dict__", "_fields", "")), v()]
                      for _ in range(self.rng.randint(0, 3))]
            if tag == "namedtuple":
                return {tag: name, "fields": [f[0] for f in fields] if self.rng.random() < 0.8 else v(),
                        "items": [f[1] for f in fields] if self.rng.random() < 0.8 else v()}
            return {tag: name, "fields": fields if self.rng.random() < 0.8 else v()}
        if tag == "object":
            return self.object_node(depth)
        if tag == "ref":
            return {"ref": self.pick(self.names)[0] if self.rng.random() < 0.8 else self.leaf()}
        if tag == "object_ref":
            return {"object_ref": self.pick((0, 1, 2, 3, 99, -1, None, "0", [0], 2**64))}
        if tag == "int":
            return {"int": self.pick(("1" + "0" * 30, "-5", "12x", "", "1" * 5000, 7, None, "0x10", " 3"))}
        if tag == "float":
            return {"float": self.pick(("nan", "inf", "-inf", "NaN", "1e999", "", 1, 0.5, None, [1.0], "nanx"))}
        return {tag: v()}

    def recipe(self, depth: int = 2) -> Any:
        name, args = self.pick(self.names)
        r = self.rng.random()
        if r < 0.6:
            kwargs = [] if self.rng.random() < 0.7 else [[self.pick(("lr", "width", "act", "x", "__class__")), self.value(1)]]
            return {"name": name, "args": list(args), "kwargs": kwargs}
        if r < 0.85:
            return {"name": name if self.rng.random() < 0.8 else self.leaf(), "args": self.value(depth),
                    "kwargs": self.value(depth)}
        return self.value(depth)

    def object_node(self, depth: int = 2) -> dict:
        node = {"object": self.pick(OBJECT_KINDS), "id": self.pick((0, 1, 2, 5, 99, None, "1", True, [1])),
                "class": self.pick(self.names)[0], "path": "obj", "recipe": self.recipe(depth)}
        for key in ("state", "params", "optimizer", "training"):
            if self.rng.random() < 0.4:
                node[key] = self.value(depth)
        return node

    def attrs(self) -> Any:
        if self.rng.random() < 0.1:
            return self.value(1)
        keys = ("device", "parameter", "requires_grad", "scalar", "grad", "layout", "names", "memory_format", "x")
        out: dict = {}
        for _ in range(self.rng.randint(1, 3)):
            key = self.pick(keys)
            if key == "device":
                out[key] = self.pick(DEVICES) if self.rng.random() < 0.8 else self.leaf()
            elif key in ("parameter", "requires_grad", "scalar"):
                out[key] = self.pick((True, False, "yes", 1, 0, None, [True], 2.5))
            else:
                out[key] = self.value(1)
        return out


# -- the nodes of a tree, and editing one ---------------------------------------------------------

def node_paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every index path into a JSON value (dict keys and list positions)."""
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += node_paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += node_paths(v, prefix + (i,))
    return out


def set_at(root: Any, where: tuple, value: Any) -> Any:
    """``root`` with the value at ``where`` replaced (``where == ()`` replaces the root)."""
    if not where:
        return value
    node = root
    for part in where[:-1]:
        node = node[part]
    node[where[-1]] = value
    return root


def nodes_with(root: Any, pred: Callable[[dict], bool]) -> list[tuple]:
    return [p for p in node_paths(root) if isinstance(_get(root, p), dict) and pred(_get(root, p))]


def _get(root: Any, where: tuple) -> Any:
    for part in where:
        root = root[part]
    return root


# -- crafted single-file manifests ----------------------------------------------------------------

def _craft_tree_node(g: Gen, m: dict, header: dict) -> str:
    paths = node_paths(m["tree"])
    where = g.pick(paths)
    m["tree"] = set_at(m["tree"], where, g.node(3) if g.rng.random() < 0.6 else g.value(3))
    return f"tree{list(where)}"


def _craft_tree_insert(g: Gen, m: dict, header: dict) -> str:
    lists = [p for p in node_paths(m["tree"]) if isinstance(_get(m["tree"], p), list)]
    where = g.pick(lists)
    target = _get(m["tree"], where)
    item = g.node(2)
    if where and where[-1] == "dict":
        item = [g.pick(("a", "model", 0, None, "ghost")), item]
    target.insert(g.rng.randint(0, len(target)), item)
    return f"insert at tree{list(where)}"


def _craft_tensor_entry(g: Gen, m: dict, header: dict) -> str:
    tensors = m.get("tensors")
    name = g.pick(sorted(tensors))
    r = g.rng.random()
    if r < 0.15:
        tensors[name] = g.value(2)
        return f"tensors[{name!r}] replaced"
    if r < 0.25:
        field_ = g.pick(sorted(tensors[name]))
        del tensors[name][field_]
        return f"tensors[{name!r}].{field_} deleted"
    field_ = g.pick(("xxh3", "kind", "framework", "dtype", "shape", "attrs", "file", "extra"))
    values = {
        "xxh3": ("0" * 16, "zz", "", None, 5, "A" * 16, "0" * 15),
        "kind": ("tensor", "bytes", "pickle", "exec", None, 1, ""),
        "framework": ("numpy", "torch", "jax", "tensorflow", "mxnet", "os", "modelsafe.adapters.numpy:ADAPTER", None, 3),
        "dtype": ("float32", "bfloat16", "complex128", "float8_e8m0fnu", "float99", "object", "U8", None, 1),
    }
    if field_ in values:
        tensors[name][field_] = g.pick(values[field_]) if g.rng.random() < 0.8 else g.value(1)
    elif field_ == "shape":
        tensors[name][field_] = g.pick(([], [0], [1], [3], [2, 3], [-1], [10**6, 10**6], [2**62, 4], [True], ["3"],
                                        "3", None)) if g.rng.random() < 0.8 else g.value(1)
    elif field_ == "attrs":
        tensors[name][field_] = g.attrs()
    else:
        tensors[name][field_] = g.value(1)
    return f"tensors[{name!r}].{field_}"


def _craft_attrs(g: Gen, m: dict, header: dict) -> str:
    names = sorted(m["tensors"])
    chosen = g.rng.sample(names, min(len(names), g.rng.randint(1, 3)))
    for name in chosen:
        m["tensors"][name]["attrs"] = g.attrs()
    return f"attrs of {chosen}"


def _craft_aliases(g: Gen, m: dict, header: dict) -> str:
    stored = sorted(m["tensors"])
    r = g.rng.random()
    if r < 0.25:
        m["aliases"] = g.pick(([], "a", 3, None, [["a", "b"]], {"a": 1}, {"a": None}, {"a": ["w"]}, True))
        return f"aliases = {m['aliases']!r}"
    aliases = dict(m.get("aliases") or {})
    for _ in range(g.rng.randint(1, 3)):
        how = g.pick(("shadow", "missing", "chain", "self", "metadata", "many"))
        a, b = g.pick(stored), g.pick(stored)
        if how == "shadow":
            aliases[a] = b
        elif how == "missing":
            aliases[g.pick(("ghost", "x.y", ""))] = "nowhere"
        elif how == "chain":
            aliases["alias1"], aliases["alias2"] = "alias2", "alias1"
        elif how == "self":
            aliases["loop"] = "loop"
        elif how == "metadata":
            aliases["__metadata__"] = a
        else:
            aliases.update({f"many{i}": a for i in range(200)})
    m["aliases"] = aliases
    return f"aliases {sorted(aliases)[:4]}"


def _craft_recipe(g: Gen, m: dict, header: dict) -> str:
    tree = m["tree"]
    recipes = nodes_with(tree, lambda n: "recipe" in n)
    refs = nodes_with(tree, lambda n: "ref" in n or "namedtuple" in n or "dataclass" in n)
    r = g.rng.random()
    if recipes and r < 0.55:
        where = g.pick(recipes)
        node = _get(tree, where)
        what = g.pick(("recipe", "recipe", "recipe", "class", "object", "state"))
        node[what] = {"recipe": lambda: g.recipe(2), "class": lambda: g.pick(g.names)[0],
                      "object": lambda: g.pick(OBJECT_KINDS), "state": lambda: g.value(3)}[what]()
        if what == "recipe" and g.rng.random() < 0.3:
            node.pop("state", None)  # a recipe node without state: built from the recipe alone
        return f"{what} at tree{list(where)}"
    if refs and r < 0.85:
        where = g.pick(refs)
        node = _get(tree, where)
        tag = next(t for t in ("ref", "namedtuple", "dataclass") if t in node)
        node[tag] = g.pick(g.names)[0]
        return f"{tag} name at tree{list(where)}"
    where = g.pick(node_paths(tree))
    m["tree"] = set_at(tree, where, g.object_node(2))
    return f"object node at tree{list(where)}"


def _craft_metadata(g: Gen, m: dict, header: dict) -> str:
    m["metadata"] = g.value(4) if g.rng.random() < 0.5 else g.node(3)
    return "metadata"


def _craft_top(g: Gen, m: dict, header: dict) -> str:
    key = g.pick(("format_version", "writer", "framework", "versions", "tensors", "tree", "aliases", "metadata"))
    choices = {
        "format_version": ([1, 0], [1, 99], [2, 0], [0, 1], "1.0", [1], [1, 0, 0], None, [True, False], [2**64, 0]),
        "framework": ("numpy", "torch", "jax", "tensorflow", "mxnet", "os", "", None, 7, ["torch"]),
    }
    m[key] = g.pick(choices[key]) if key in choices and g.rng.random() < 0.8 else g.value(2)
    return f"manifest[{key!r}]"


def _craft_header_entry(g: Gen, m: dict, header: dict) -> str:
    name = g.pick([k for k in header if k != "__metadata__"])
    field_ = g.pick(("dtype", "shape", "data_offsets"))
    spec = header[name]
    if field_ == "dtype":
        spec["dtype"] = g.pick(("F32", "F64", "U8", "I64", "BOOL", "F8_E8M0", "C64", "X9", "", None))
    elif field_ == "shape":
        spec["shape"] = g.pick(([], [0], [1], [2, 2], [10**6, 10**6], [-1], [2**40]))
    else:
        begin, end = spec["data_offsets"]
        spec["data_offsets"] = g.pick(([begin, end + 8], [begin - 4, end], [end, begin], [0, end], [begin, 2**64]))
    return f"header[{name!r}].{field_}"


SINGLE_FAMILIES: dict[str, Callable[[Gen, dict, dict], str]] = {
    "tree_node": _craft_tree_node, "tree_insert": _craft_tree_insert, "tensor_entry": _craft_tensor_entry,
    "attrs": _craft_attrs, "aliases": _craft_aliases, "recipe": _craft_recipe, "metadata": _craft_metadata,
    "top": _craft_top, "header_entry": _craft_header_entry,
}


def seal_file(header: dict, data: bytes) -> bytes:
    """A file whose header (any JSON, tensor entries as given) carries a valid seal."""
    meta = header.get("__metadata__")
    if isinstance(meta, dict) and isinstance(meta.get(MANIFEST_KEY), (dict, list)):
        header = dict(header, __metadata__=dict(meta, **{MANIFEST_KEY: json.dumps(meta[MANIFEST_KEY])}))
    return reseal_bytes(raw_file(header, data))


def reseal_bytes(blob: bytes) -> bytes:
    """``blob`` with its header seal recomputed, when the header still has exactly one seal."""
    if len(blob) < 8:
        return blob
    (n,) = struct.unpack("<Q", blob[:8])
    if n > len(blob) - 8:
        return blob
    try:
        return reseal(blob[: 8 + n]) + blob[8 + n:]
    except Exception:  # noqa: BLE001 - no seal (or two): the file stays as damaged as it is
        return blob


# -- crafted run files and checkpoint manifests ---------------------------------------------------

def _edit_json_file(path: str, edit: Callable[[Any], Any]) -> None:
    with open(path) as f:
        value = json.load(f)
    value = edit(value)
    os.unlink(path)  # the copy may share the base's inode: never write through a link
    with open(path, "w") as f:
        json.dump(value, f)


def _craft_run_file(g: Gen, run: str, scratch: str) -> str:
    path = os.path.join(run, RUN_FILE)
    key = g.pick(("format", "run_id", "created", "lineage", "monitor", "mode", "keep_last", "keep_best", "name",
                  "whole", "extra"))
    values = {
        "format": ("modelsafe run", "modelsafe run 2", "", None, 1),
        "run_id": ("0" * 16, "../x", "", None, 5, ["a"]),
        "lineage": ([], {}, "x", 5, None, [1], [{}], [{"run": 1, "run_id": None}], [{"run": "/nonexistent", "step": "x"}]),
        "monitor": ("loss", "acc", "missing", "", None, 3, ["loss"], {"a": 1}),
        "mode": ("min", "max", "median", "", None, 1),
        "keep_last": (1, 0, -1, None, "2", 2.5, True, 2**64),
        "keep_best": (1, 0, -1, None, "2", 2.5, True, 2**64),
        "name": ("step{step}", "{step", "{0.__class__}", "{__import__}", "{step.__class__.__mro__}", "", None, 5, "../{step}",
                 "{val_loss:.4f}", "step{step:99999999d}"),
    }

    def edit(run_file: Any) -> Any:
        if key == "whole":
            return g.value(3)
        if not isinstance(run_file, dict):
            return run_file
        run_file[key] = g.pick(values[key]) if key in values and g.rng.random() < 0.8 else g.value(2)
        return run_file

    _edit_json_file(path, edit)
    return f"run file {key}"


def _checkpoint_dirs(run: str) -> list[str]:
    return sorted(d for d in os.listdir(run) if os.path.isfile(os.path.join(run, d, "manifest.json")))


def _craft_checkpoint_manifest(g: Gen, run: str, scratch: str) -> str:
    name = g.pick(_checkpoint_dirs(run))
    path = os.path.join(run, name, "manifest.json")
    what = g.pick(("checkpoint", "checkpoint", "shards", "files", "tensors.file", "tree", "aliases", "top", "attrs"))
    note = [f"{name}/manifest.json {what}"]

    def edit(m: dict) -> Any:
        if what == "checkpoint":
            key = g.pick(("name", "step", "time", "metrics", "run_id", "lineage", "whole"))
            values = {
                "name": ("step000", "step001", "../x", "", None, 5, "latest", "a/b", "best"),
                "step": (0, 1, 2, -1, 2**64, None, "1", 1.5, True, [1]),
                "time": ("", "yesterday", None, 5, "2026-13-45T99:99:99", "9999-12-31T23:59:59+00:00"),
                "metrics": ({}, {"loss": "nan"}, {"loss": "x"}, {"loss": None}, {"loss": [1]}, [], None, "loss",
                            {"loss": 10**400 if False else 1e308}, {"": 1}),
                "run_id": ("", None, 3, "0" * 16, ["x"]),
                "lineage": ([], {}, "x", 5, None, [1], [{}], [{"run": 1}]),
            }
            if key == "whole":
                m["checkpoint"] = g.value(2)
            elif isinstance(m.get("checkpoint"), dict):
                m["checkpoint"][key] = g.pick(values[key]) if g.rng.random() < 0.8 else g.value(2)
            note.append(key)
        elif what == "shards":
            m["shards"] = g.pick(([], None, "x", [{"file": "../../x", "size": 1}], [{"file": "manifest.json", "size": 5}],
                                  [{"file": "state-00001-of-00001.safetensors", "size": -1}],
                                  [{"file": "state-00001-of-00001.safetensors", "size": 2**64}],
                                  [{"file": "/etc/passwd", "size": 10}], [{"file": None}], [1, 2]))
        elif what == "files":
            m["files"] = g.pick(({"files/../../x": {"size": 1, "xxh3": "0" * 16}},
                                 {"/etc/passwd": {"size": 1, "xxh3": "0" * 16}},
                                 {"files/a": {"size": -1, "xxh3": "0" * 16}}, {"files/a": None}, [], "files",
                                 {"files/a": {"size": 2**64, "xxh3": "zz"}}, {"files": {"size": 0, "xxh3": "0" * 16}}))
        elif what == "tensors.file":
            tensors = m.get("tensors") or {}
            if tensors:
                tname = g.pick(sorted(tensors))
                tensors[tname]["file"] = g.pick(("../step000/state-00001-of-00001.safetensors", "/etc/passwd", "",
                                                 None, 3, "manifest.json", "state-00002-of-00002.safetensors", ".", "..",
                                                 "/dev/zero", "../" * 20 + "dev/zero"))
                note.append(tname)
        elif what in ("tree", "aliases", "top", "attrs"):
            family = {"tree": _craft_tree_node, "aliases": _craft_aliases, "top": _craft_top, "attrs": _craft_attrs}[what]
            note.append(family(g, m, {}))
        return m

    _edit_json_file(path, edit)
    return " ".join(note)


def _craft_special_file(g: Gen, run: str, scratch: str) -> str:
    """Links and special files where the run expects regular files (bounded reads, no following out)."""
    names = _checkpoint_dirs(run)
    name = g.pick(names)
    target = g.pick((RUN_FILE, f"{name}/manifest.json", f"{name}/state-00001-of-00001.safetensors", f"{name}/files"))
    path = os.path.join(run, target)
    kind = g.pick(("zero", "zero", "fifo", "dir", "outside", "dangling", "loop", "devnull", "urandom"))
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
    if kind == "zero":
        os.symlink("/dev/zero", path)
    elif kind == "urandom":
        os.symlink("/dev/urandom", path)
    elif kind == "devnull":
        os.symlink("/dev/null", path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "dir":
        os.mkdir(path)
    elif kind == "outside":
        outside = os.path.join(scratch, "outside")
        os.makedirs(outside, exist_ok=True)
        src = os.path.join(outside, "victim")
        with open(src, "w") as f:
            f.write('{"format": "modelsafe run"}')
        os.symlink(outside if target.endswith("files") else src, path)
    elif kind == "dangling":
        os.symlink(os.path.join(scratch, "nothing-here"), path)
    else:
        os.symlink(os.path.basename(path), path)
    return f"{target} -> {kind}"


RUN_FAMILIES: dict[str, Callable[[Gen, str, str], str]] = {
    "run_file": _craft_run_file, "checkpoint_manifest": _craft_checkpoint_manifest,
    "special_file": _craft_special_file,
}
FAMILIES = tuple(SINGLE_FAMILIES) + tuple(RUN_FAMILIES)
# how often each family comes up (run cases exercise more entry points; special files stay rare)
FAMILY_WEIGHTS = {"tree_node": 14, "tree_insert": 6, "tensor_entry": 10, "attrs": 8, "aliases": 6, "recipe": 14,
                  "metadata": 4, "top": 4, "header_entry": 4, "run_file": 10, "checkpoint_manifest": 18,
                  "special_file": 2}


# -- byte mutations -------------------------------------------------------------------------------

INTERESTING_BYTES = b'\x00\xff\x7f\x80"{}[]:,-.09eE\\ \n'
_NUMBER = re.compile(rb"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')


def _json_token_mutation(rng: random.Random, text: bytes) -> bytes:
    r = rng.random()
    pattern = _NUMBER if r < 0.5 else _STRING if r < 0.85 else re.compile(rb"true|false|null|\]|\}")
    matches = list(pattern.finditer(text))
    if not matches:
        return text
    m = rng.choice(matches)
    if pattern is _NUMBER:
        new = str(rng.choice(INTERESTING_INTS + (1.5, 1e308, -0.0))).encode()
    elif pattern is _STRING:
        new = json.dumps(rng.choice(INTERESTING_STRINGS)).encode()
    else:
        new = rng.choice((b"true", b"false", b"null", b"0", b'""', b"[]", b"{}", b""))
    return text[: m.start()] + new + text[m.end():]


def mutate_bytes(rng: random.Random, blob: bytes, json_span: tuple[int, int]) -> tuple[bytes, list[str]]:
    """``blob`` with 1-3 random byte mutations; ``json_span`` is where its JSON text lies."""
    data = bytearray(blob)
    notes = []
    for _ in range(rng.randint(1, 3)):
        size = len(data)
        how = rng.choice(("flip", "flip", "byte", "json", "json", "json", "cut", "insert", "dup", "truncate", "append"))
        if size == 0:
            how = "append"
        if how == "flip":
            pos = rng.randrange(size)
            data[pos] ^= 1 << rng.randrange(8)
        elif how == "byte":
            pos = rng.randrange(size)
            data[pos] = rng.choice(INTERESTING_BYTES)
        elif how == "json":
            begin, end = json_span
            end = min(end, size)
            if begin >= end:
                continue
            new = _json_token_mutation(rng, bytes(data[begin:end]))
            data[begin:end] = new
            json_span = (begin, begin + len(new))
            if begin == 8:  # keep the length prefix honest, so the damage reaches the JSON parser
                pad = -(len(new) + 8) % 8
                data[begin + len(new):begin + len(new)] = b" " * pad
                data[:8] = struct.pack("<Q", len(new) + pad)
                json_span = (8, 8 + len(new) + pad)
        elif how == "cut":
            pos = rng.randrange(size)
            del data[pos:pos + rng.choice((1, 2, 8, 64))]
        elif how == "insert":
            pos = rng.randrange(size + 1)
            data[pos:pos] = bytes(rng.choice(INTERESTING_BYTES) for _ in range(rng.choice((1, 4, 8))))
        elif how == "dup":
            pos = rng.randrange(size)
            piece = data[pos:pos + rng.choice((4, 16, 64))]
            data[pos:pos] = piece
        elif how == "truncate":
            del data[rng.randrange(size):]
        else:
            data += bytes(rng.choice(INTERESTING_BYTES) for _ in range(rng.choice((1, 8, 100))))
        notes.append(how)
    return bytes(data), notes


def header_span(blob: bytes) -> tuple[int, int]:
    """Where a safetensors file's JSON header lies (the whole blob for a JSON file)."""
    if len(blob) >= 8 and blob[8:9] == b"{":
        (n,) = struct.unpack("<Q", blob[:8])
        return 8, min(8 + n, len(blob))
    return 0, len(blob)


# -- one case -------------------------------------------------------------------------------------

@dataclass
class Case:
    """A prepared case: what to open, with which entry points, made how."""

    kind: str        # "manifest" | "mutation"
    seed: int
    index: int
    family: str
    target: str      # "single:<base>" or "run"
    path: str        # the file, or the run directory
    note: str = ""
    size: int = 0    # bytes the case's files hold (apparent size of regular files)
    ops: list[str] = field(default_factory=list)


def case_rng(kind: str, seed: int, index: int) -> random.Random:
    return random.Random(f"{kind}:{seed}:{index}")


def pick_family(rng: random.Random) -> str:
    names = list(FAMILY_WEIGHTS)
    return rng.choices(names, weights=[FAMILY_WEIGHTS[n] for n in names])[0]


def copy_run(src: str, dst: str) -> None:
    """A copy of the run: directories made, files hard-linked (cases replace files, never write into them)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst, copy_function=os.link, ignore=shutil.ignore_patterns(".modelsafe.lock"))


def _tensor_names(manifest: Any) -> list[str]:
    if isinstance(manifest, dict) and isinstance(manifest.get("tensors"), dict):
        return sorted(manifest["tensors"]) + sorted(manifest.get("aliases") or {})
    return []


def _case_size(path: str) -> int:
    if os.path.isfile(path) and not os.path.islink(path):
        return os.path.getsize(path)
    total = 0
    for root, _, names in os.walk(path):
        for n in names:
            p = os.path.join(root, n)
            if os.path.isfile(p) and not os.path.islink(p):
                total += os.path.getsize(p)
    return total


def make_case(kind: str, seed: int, index: int, bases: Bases, scratch: str, trace_dir: str) -> Case:
    """Build case ``index`` of ``kind`` in ``scratch`` (emptied first)."""
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    rng = case_rng(kind, seed, index)
    names = canary_names(trace_dir)
    if kind == "manifest":
        case = _crafted(rng, seed, index, bases, scratch, names)
    elif kind == "mutation":
        case = _mutated(rng, seed, index, bases, scratch, names)
    elif kind == "resource":
        case = _resourceful(rng, seed, index, bases, scratch)
    else:
        raise ValueError(f"unknown case kind {kind!r}")
    case.size = _case_size(case.path)
    return case


def _crafted(rng: random.Random, seed: int, index: int, bases: Bases, scratch: str, names: list) -> Case:
    family = pick_family(rng)
    if family in RUN_FAMILIES:
        run = os.path.join(scratch, "run")
        copy_run(bases.run, run)
        manifest = json.load(open(os.path.join(run, _checkpoint_dirs(run)[-1], "manifest.json")))
        g = Gen(rng, names, _tensor_names(manifest))
        note = RUN_FAMILIES[family](g, run, scratch)
        return Case("manifest", seed, index, family, "run", run, note)
    base = rng.choice(SINGLE_BASES)
    header, data = read_parts(bases.files[base])
    manifest = json.loads(header["__metadata__"][MANIFEST_KEY])
    g = Gen(rng, names, _tensor_names(manifest))
    note = SINGLE_FAMILIES[family](g, manifest, header)
    header["__metadata__"][MANIFEST_KEY] = manifest
    path = os.path.join(scratch, f"{base}.safetensors")
    with open(path, "wb") as f:
        f.write(seal_file(header, data))
    return Case("manifest", seed, index, family, f"single:{base}", path, note)


HEAVY_RECIPES = [("torch.nn.Linear", [20000, 20000]), ("torch.nn.Embedding", [2**31, 2**20]),
                 ("torch.nn.Conv2d", [4096, 4096, 64]), ("fuzz.Net", [20000]), ("torch.nn.LSTM", [8192, 8192, 8])]


def _resourceful(rng: random.Random, seed: int, index: int, bases: Bases, scratch: str) -> Case:
    """A small file whose honest-looking content asks for much: a recipe that builds a huge module
    (with or without state), or thousands of dataclass and namedtuple stand-ins."""
    header, data = read_parts(bases.files["objects"])
    manifest = json.loads(header["__metadata__"][MANIFEST_KEY])
    tree = manifest["tree"]
    if rng.random() < 0.75:
        name, args = rng.choice(HEAVY_RECIPES)
        where = rng.choice(nodes_with(tree, lambda n: "recipe" in n))
        node = _get(tree, where)
        node["recipe"] = {"name": name, "args": args, "kwargs": []}
        stateless = rng.random() < 0.5
        if stateless:
            node.pop("state", None)
        note = f"{name}{tuple(args)} at tree{list(where)}{' without state' if stateless else ''}"
    else:
        count = rng.choice((500, 5000))  # 20,000 took 10-23 s per load (issue 11); 5,000 is over budget too
        tag = rng.choice(("dataclass", "namedtuple"))
        stand_ins = [{"dataclass": f"gone.module{i}:Cls{i}", "fields": [["a", i]]} if tag == "dataclass" else
                     {"namedtuple": f"gone.module{i}:Nt{i}", "fields": ["a"], "items": [i]} for i in range(count)]
        tree["dict"].append(["stand_ins", stand_ins])
        note = f"{count} {tag} stand-ins"
    header["__metadata__"][MANIFEST_KEY] = manifest
    path = os.path.join(scratch, "objects.safetensors")
    with open(path, "wb") as f:
        f.write(seal_file(header, data))
    return Case("resource", seed, index, "resource", "single:objects", path, note)


def _mutated(rng: random.Random, seed: int, index: int, bases: Bases, scratch: str, names: list) -> Case:
    where = rng.choice(SINGLE_BASES + ("run_file", "checkpoint_manifest", "shard"))
    if where in SINGLE_BASES:
        path = os.path.join(scratch, f"{where}.safetensors")
        blob = open(bases.files[where], "rb").read()
        target, victim = f"single:{where}", path
    else:
        path = os.path.join(scratch, "run")
        copy_run(bases.run, path)
        checkpoint = rng.choice(_checkpoint_dirs(path))
        victim = os.path.join(path, {"run_file": RUN_FILE, "checkpoint_manifest": f"{checkpoint}/manifest.json",
                                     "shard": f"{checkpoint}/state-00001-of-00001.safetensors"}[where])
        blob = open(victim, "rb").read()
        target = "run"
    new, notes = mutate_bytes(rng, blob, header_span(blob))
    resealed = where in SINGLE_BASES + ("shard",) and rng.random() < 0.7
    if resealed:
        new = reseal_bytes(new)
    if os.path.lexists(victim):
        os.unlink(victim)  # never write through the hard link to the base
    with open(victim, "wb") as f:
        f.write(new)
    note = f"{os.path.relpath(victim, scratch)}: {'+'.join(notes)}{' resealed' if resealed else ''}"
    return Case("mutation", seed, index, where, target, path, note)
