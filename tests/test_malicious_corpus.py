"""A corpus of hostile pickles and torch files, built here at test time: every one must be refused.

19 gadgets (15 families) x 16 carriers = 300 files: raw pickles of protocols 0/2/4/5 and a
raw pickle named .pt; INST/OBJ opcode forms; zip .pt files with the gadget nested in a
valid state_dict or hidden in a storage persistent id; legacy .pt files with the gadget
in the object pickle or in the magic-number pickle; and the everyday attack, a real
``torch.save`` (zip, protocol 2 and 4, and legacy) or ``pickle.dumps`` of an object whose
``__reduce__`` is the gadget.  Each gadget, if run, creates a sentinel file (or deletes a
victim file/directory); a control test proves the files are live by loading some with
plain pickle / torch.load(weights_only=False) in a subprocess.  modelsafe must refuse
each with an error naming the file and the first global that is not on its allowlist,
create nothing, and raise no dangerous audit event (sys.addaudithook in a subprocess).
"""

from __future__ import annotations

import importlib
import json
import marshal
import os
import pickle
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from modelsafe.convert import convert
from modelsafe.errors import CorruptCheckpointError, UnsafeObjectError
from modelsafe.legacy.torch_pickle import ALLOWED_GLOBALS

from legacy_craft import G, assemble, call, globals_in, inst, main_pickle, obj, persid, tensor_expr, torch_legacy, torch_zip, tup

PY = sys.executable


@dataclass
class Trap:
    """What a gadget would do: create ``sentinel``, or delete ``victim``."""

    sentinel: str
    victim_file: str
    victim_dir: str
    script: str

    def sprung(self) -> bool:
        return os.path.exists(self.sentinel) or not os.path.exists(self.victim_file) or not os.path.isdir(self.victim_dir)


def _touch(trap: Trap) -> str:
    return f"touch {trap.sentinel}"


def _py_touch(trap: Trap) -> str:
    return f"open({trap.sentinel!r}, 'w').close()"


def _import_os() -> tuple:
    return call(G("builtins", "__import__"), "os")


FAMILIES = {
    "os.system": lambda t: call(G("os", "system"), _touch(t)),
    "posix.system": lambda t: call(G("posix", "system"), _touch(t)),
    "builtins.eval": lambda t: call(G("builtins", "eval"), f"__import__('os').system({_touch(t)!r})"),
    "builtins.exec": lambda t: call(G("builtins", "exec"), _py_touch(t)),
    "subprocess.Popen": lambda t: call(G("subprocess", "Popen"), ["touch", t.sentinel]),
    "subprocess.check_output": lambda t: call(G("subprocess", "check_output"), ["touch", t.sentinel]),
    "importlib+getattr": lambda t: call(call(G("builtins", "getattr"), call(G("importlib", "import_module"), "os"), "system"), _touch(t)),
    "pkgutil.resolve_name": lambda t: call(call(G("pkgutil", "resolve_name"), "os:system"), _touch(t)),
    "runpy.run_path": lambda t: call(G("runpy", "run_path"), t.script),
    "marshal+FunctionType": lambda t: call(call(G("types", "FunctionType"),
                                                call(G("marshal", "loads"), marshal.dumps(compile(_py_touch(t), "<gadget>", "exec"))),
                                                {})),
    "ctypes": lambda t: call(call(G("builtins", "getattr"), call(G("ctypes", "CDLL"), None), "system"), _touch(t).encode()),
    "builtins.__import__+getattr": lambda t: call(call(G("builtins", "getattr"), _import_os(), "system"), _touch(t)),
    "operator.attrgetter": lambda t: call(call(call(G("operator", "attrgetter"), "system"), _import_os()), _touch(t)),
    "operator.methodcaller": lambda t: call(call(G("operator", "methodcaller"), "system", _touch(t)), _import_os()),
    "functools.partial": lambda t: call(call(G("functools", "partial"), G("os", "system"), _touch(t))),
    "shutil.rmtree": lambda t: call(G("shutil", "rmtree"), t.victim_dir),
    "os.remove": lambda t: call(G("os", "remove"), t.victim_file),
    "webbrowser.open": lambda t: call(G("webbrowser", "open"), t.sentinel),
    "code.InteractiveInterpreter": lambda t: call(call(G("builtins", "getattr"), call(G("code", "InteractiveInterpreter")),
                                                       "runsource"), _py_touch(t)),
}
# families grouped the way the issue counts them (os.system/posix.system are one family, and so on)
FAMILY_GROUPS = {
    "os.system": "os.system", "posix.system": "os.system", "builtins.eval": "eval", "builtins.exec": "exec",
    "subprocess.Popen": "subprocess", "subprocess.check_output": "subprocess", "importlib+getattr": "importlib",
    "pkgutil.resolve_name": "pkgutil", "runpy.run_path": "runpy", "marshal+FunctionType": "marshal",
    "ctypes": "ctypes", "builtins.__import__+getattr": "getattr/__import__", "operator.attrgetter": "operator",
    "operator.methodcaller": "operator", "functools.partial": "functools", "shutil.rmtree": "file removal",
    "os.remove": "file removal", "webbrowser.open": "webbrowser", "code.InteractiveInterpreter": "code",
}

FLOATS = np.arange(4, dtype=np.float32).tobytes()


def _as_opcode_form(expr: tuple, protocol: int) -> tuple:
    """The same gadget called through INST (plain global callee, protocol 0) or OBJ (any callee)."""
    _, fn, args = expr
    if fn[0] == "global" and protocol == 0:
        return inst(fn[1], fn[2], *args)
    return obj(fn, *args)


def _write(carrier: str, gadget: tuple, protocol: int, path: Path) -> list[str]:
    """Write ``gadget`` in ``carrier`` form to ``path``; returns the globals emitted, in order."""
    if carrier == "raw":
        data, globals_ = assemble(gadget, protocol)
        path.write_bytes(data)
    elif carrier == "opcode":
        data, globals_ = assemble(_as_opcode_form(gadget, protocol), protocol)
        path.write_bytes(data)
    elif carrier == "zip-nested":
        data, globals_ = assemble({"weight": tensor_expr("0", 4), "evil": gadget}, protocol)
        torch_zip(path, data, {"0": FLOATS})
    elif carrier == "zip-persid":
        pid = tup("storage", gadget, "0", "cpu", 4)
        expr = {"weight": call(G("torch._utils", "_rebuild_tensor_v2"), persid(pid), 0, tup(4), tup(1), False,
                               call(G("collections", "OrderedDict")))}
        data, globals_ = assemble(expr, protocol)
        torch_zip(path, data, {"0": FLOATS})
    elif carrier == "legacy-main":
        data, globals_ = assemble({"weight": tensor_expr("0", 4, legacy=True), "evil": gadget}, protocol)
        torch_legacy(path, data, [("0", 4, FLOATS)])
    elif carrier in ("torch.save", "torch.save-legacy"):
        # the everyday attack: a real torch.save of a state_dict with a __reduce__ object inside
        import torch

        legacy = carrier == "torch.save-legacy"
        torch.save({"weight": torch.arange(4.0), "evil": _reducing(gadget)}, path, pickle_protocol=protocol,
                   _use_new_zipfile_serialization=not legacy)
        globals_ = globals_in(main_pickle(path, legacy))
    elif carrier == "pickle.dumps":
        data = pickle.dumps(_reducing(gadget), protocol=protocol)
        path.write_bytes(data)
        globals_ = globals_in(data)
    elif carrier == "legacy-magic":
        magic, globals_ = assemble(gadget, protocol)
        data, _ = assemble({"weight": tensor_expr("0", 4, legacy=True)}, protocol)
        torch_legacy(path, data, [("0", 4, FLOATS)], magic_pickle=magic)
    else:
        raise ValueError(carrier)
    return globals_


class Reduce:
    """An object whose __reduce__ is ``fn(*args)``: what attackers put in a pickle."""

    def __init__(self, fn, args) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args

    def __call__(self, *args):  # pickle wants the reduce callable to be callable  # pragma: no cover
        raise AssertionError("never called here")


def _reducing(expr):
    """Real Python objects whose pickling writes the gadget ``expr``."""
    if isinstance(expr, tuple) and expr and expr[0] == "global":
        return getattr(importlib.import_module(expr[1]), expr[2])
    if isinstance(expr, tuple) and expr and expr[0] == "call":
        return Reduce(_reducing(expr[1]), tuple(_reducing(a) for a in expr[2]))
    if isinstance(expr, list):
        return [_reducing(v) for v in expr]
    if isinstance(expr, dict):
        return {k: _reducing(v) for k, v in expr.items()}
    return expr


# (carrier, protocol, extension)
CARRIERS = [
    ("raw", 0, ".pkl"), ("raw", 2, ".pkl"), ("raw", 4, ".pkl"), ("raw", 5, ".pkl"), ("raw", 2, ".pt"),
    ("opcode", 0, ".pkl"), ("opcode", 2, ".pth"),
    ("zip-nested", 2, ".pt"), ("zip-nested", 4, ".bin"), ("zip-persid", 2, ".pt"),
    ("legacy-main", 2, ".pt"), ("legacy-magic", 2, ".pth"),
    ("torch.save", 2, ".pt"), ("torch.save", 4, ".pth"), ("torch.save-legacy", 2, ".pt"), ("pickle.dumps", 5, ".pkl"),
]


@dataclass
class Specimen:
    path: str
    family: str
    carrier: str
    protocol: int
    offending: str       # the first global the reader meets that is not on the allowlist
    trap: Trap


def _make_trap(root: Path, name: str) -> Trap:
    victim_dir = root / f"{name}.victim-dir"
    victim_dir.mkdir()
    (victim_dir / "keep").write_text("keep")
    victim_file = root / f"{name}.victim"
    victim_file.write_text("keep")
    sentinel = root / f"{name}.SENTINEL"
    script = root / f"{name}.script.py"
    script.write_text(f"open({str(sentinel)!r}, 'w').close()\n")
    return Trap(str(sentinel), str(victim_file), str(victim_dir), str(script))


def build_corpus(root: Path) -> list[Specimen]:
    specimens = []
    for family, gadget_of in FAMILIES.items():
        for carrier, protocol, ext in CARRIERS:
            name = f"{family.replace('+', '_').replace('.', '_')}-{carrier}-p{protocol}-{ext[1:]}"
            trap = _make_trap(root, name)
            path = root / f"{name}{ext}"
            try:
                globals_ = _write(carrier, gadget_of(trap), protocol, path)
            except (pickle.PicklingError, AttributeError, TypeError):
                continue  # pickle cannot write this gadget by reference (types.FunctionType): assembled forms cover it
            offending = next(g for g in globals_ if g not in ALLOWED_GLOBALS)
            specimens.append(Specimen(str(path), family, carrier, protocol, offending, trap))
    return specimens


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[Specimen]:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def test_corpus_is_large_and_varied(corpus):
    assert len(corpus) >= 100
    assert len(set(FAMILY_GROUPS[s.family] for s in corpus)) >= 12
    assert {s.protocol for s in corpus} >= {0, 2, 4, 5}
    assert {s.carrier for s in corpus} >= {"raw", "opcode", "zip-nested", "zip-persid", "legacy-main", "legacy-magic",
                                           "torch.save", "torch.save-legacy", "pickle.dumps"}
    assert sum(s.carrier.startswith("torch.save") for s in corpus) >= 40
    raw = open(next(s.path for s in corpus if s.carrier == "raw" and s.protocol == 4), "rb").read()
    assert b"\x93" in raw  # STACK_GLOBAL
    raw = open(next(s.path for s in corpus if s.carrier == "raw" and s.protocol == 2), "rb").read()
    assert raw[2:3] == b"c"  # GLOBAL


def test_every_specimen_is_refused_naming_file_and_global(corpus, tmp_path):
    problems = []
    for s in corpus:
        dst = tmp_path / (Path(s.path).name + ".safetensors")
        try:
            convert(s.path, dst)
        except (UnsafeObjectError, CorruptCheckpointError) as exc:
            message = str(exc)
            if s.path not in message or s.offending not in message:
                problems.append(f"{s.path}: message lacks file or {s.offending}: {message}")
            if exc.path != s.path:
                problems.append(f"{s.path}: error.path is {exc.path!r}")
        except Exception as exc:  # noqa: BLE001 - any other outcome is a failure to report
            problems.append(f"{s.path}: {type(exc).__name__}: {exc}")
        else:
            problems.append(f"{s.path}: was converted")
        if dst.exists():
            problems.append(f"{s.path}: wrote {dst}")
        if s.trap.sprung():
            problems.append(f"{s.path}: the gadget ran")
    assert not problems, "\n".join(problems[:20])


def test_offending_globals_are_the_gadgets(corpus):
    """The reported global is the gadget's, not some torch name (the allowlist lets torch's through)."""
    firsts = {s.offending for s in corpus}
    assert {"os.system", "posix.system", "builtins.eval", "builtins.exec", "subprocess.Popen", "builtins.getattr",
            "pkgutil.resolve_name", "runpy.run_path", "types.FunctionType", "operator.attrgetter",
            "operator.methodcaller", "functools.partial", "shutil.rmtree", "os.remove", "webbrowser.open"} <= firsts
    assert not any(name.startswith("torch.") for name in firsts)


_AUDIT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    specimens, benign, out = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3]
    from modelsafe.convert import convert
    from modelsafe.errors import ModelsafeError
    convert(benign, out + ".benign.safetensors")          # warm up: every module convert needs is imported now
    for s in specimens[:3]:
        try:
            convert(s["path"], out + ".warm")
        except ModelsafeError:
            pass
    WATCHED = ("os.system", "subprocess.Popen", "exec", "compile", "import", "ctypes.dlopen", "ctypes.dlsym",
               "os.remove", "os.unlink", "os.rmdir", "shutil.rmtree", "webbrowser.open", "marshal.loads",
               "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "code.__new__", "function.__new__", "os.startfile",
               "runpy.run_path", "open")
    events = []
    recording = [False]
    def hook(event, args):
        if recording[0] and event.startswith(WATCHED):
            if event == "open" and not str(args[0]).endswith("SENTINEL"):
                return
            events.append([event, repr(args)[:200]])
    sys.addaudithook(hook)
    recording[0] = True                     # the hook itself works: a compile() is seen
    compile("1", "<self-test>", "eval")
    recording[0] = False
    assert [e[0] for e in events] == ["compile"], events
    events.clear()
    results = []
    for s in specimens:
        recording[0] = True
        try:
            convert(s["path"], out)
        except ModelsafeError as exc:
            recording[0] = False
            results.append([s["path"], type(exc).__name__, str(exc)])
        else:
            recording[0] = False
            results.append([s["path"], None, "converted"])
    print(json.dumps({"events": events, "results": results}))
    """
)


def test_nothing_executes_under_an_audit_hook(corpus, tmp_path):
    benign = tmp_path / "benign.pt"
    data, _ = assemble({"weight": tensor_expr("0", 4)}, 2)
    torch_zip(benign, data, {"0": FLOATS})
    listing = tmp_path / "specimens.json"
    listing.write_text(json.dumps([{"path": s.path, "offending": s.offending} for s in corpus]))
    script = tmp_path / "audit.py"
    script.write_text(_AUDIT_SCRIPT)
    proc = subprocess.run([PY, str(script), str(listing), str(benign), str(tmp_path / "out.safetensors")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["events"] == []
    by_path = {s.path: s for s in corpus}
    assert len(report["results"]) == len(corpus)
    for path, error, message in report["results"]:
        assert error in ("UnsafeObjectError", "CorruptCheckpointError"), (path, message)
        assert path in message and by_path[path].offending in message, message
    assert not any(s.trap.sprung() for s in corpus)


_CONTROL_SCRIPT = textwrap.dedent(
    """
    import pickle, sys
    for path, how in zip(sys.argv[1::2], sys.argv[2::2]):
        try:
            if how == "pickle":
                pickle.load(open(path, "rb"))
            else:
                import torch
                torch.load(path, weights_only=False)
        except Exception as exc:   # the gadget's return value may upset what follows; it has run by then
            print("after the gadget:", type(exc).__name__, exc)
    """
)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_control_the_specimens_are_live(family, tmp_path):
    """Plain pickle (raw) and torch.load(weights_only=False) (zip, legacy) do run these gadgets: the corpus is real."""
    script = tmp_path / "control.py"
    script.write_text(_CONTROL_SCRIPT)
    env = dict(os.environ, BROWSER="touch %s")
    traps, argv = {}, []
    for carrier, protocol, ext, how in (("raw", 2, ".pkl", "pickle"), ("zip-nested", 2, ".pt", "torch"),
                                        ("torch.save-legacy", 2, ".pt", "torch")):
        if how == "torch" and family not in ("os.system", "builtins.exec", "functools.partial"):
            continue  # torch controls for one gadget per kind of callee: each costs a torch import
        traps[carrier] = _make_trap(tmp_path, carrier)
        path = tmp_path / f"control-{carrier}{ext}"
        _write(carrier, FAMILIES[family](traps[carrier]), protocol, path)
        argv += [str(path), how]
    subprocess.run([PY, str(script), *argv], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    for _ in range(1200):  # Popen and webbrowser run their command in the background: wait up to a minute (busy machines)
        if all(trap.sprung() for trap in traps.values()):
            break
        time.sleep(0.05)
    for carrier, trap in traps.items():
        assert trap.sprung(), f"{family} via {carrier}: the control load did not run the gadget"


def test_cli_refuses_in_process(corpus, tmp_path):
    from modelsafe.cli.app import cli

    runner = CliRunner()
    sample = [s for s in corpus if s.carrier in ("zip-nested", "raw") and s.protocol in (2, 4)][::3]
    assert len(sample) >= 12
    for s in sample:
        dst = tmp_path / "out.safetensors"
        result = runner.invoke(cli, ["convert", s.path, str(dst)])
        assert result.exit_code == 1, (s.path, result.output)
        assert s.offending in result.output and s.path in result.output, result.output
        assert not dst.exists() and not s.trap.sprung()


def test_cli_refuses_as_a_subprocess(corpus, tmp_path):
    s = next(s for s in corpus if s.family == "os.system" and s.carrier == "zip-nested")
    dst = tmp_path / "out.safetensors"
    proc = subprocess.run([PY, "-m", "modelsafe", "convert", s.path, str(dst), "--json"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "os.system" in proc.stderr and s.path in proc.stderr
    assert not dst.exists() and not s.trap.sprung()


def test_a_file_cannot_change_an_allowlisted_stand_in_for_later_loads(tmp_path):
    """BUILD on builtins.complex (our stand-in function) with a __defaults__ state would make every later
    ``complex()`` in any file 5+5j; the file is refused and later conversions are unaffected."""
    from modelsafe import load

    from legacy_craft import build, call

    hostile = assemble({"w": build(G("builtins", "complex"), tup(None, {"__defaults__": tup(5.0, 5.0)}))}, 2)[0]
    benign = assemble({"c": call(G("builtins", "complex"))}, 2)[0]
    torch_zip(tmp_path / "hostile.pt", hostile)
    torch_zip(tmp_path / "benign.pt", benign)
    convert(tmp_path / "benign.pt", tmp_path / "before.safetensors")
    with pytest.raises(UnsafeObjectError, match="modifies a global"):
        convert(tmp_path / "hostile.pt", tmp_path / "hostile.safetensors")
    assert not (tmp_path / "hostile.safetensors").exists()
    convert(tmp_path / "benign.pt", tmp_path / "after.safetensors")
    assert load(tmp_path / "after.safetensors") == load(tmp_path / "before.safetensors")
