"""The allowlist unpickler and its opcode scan.

The scan must split a stream exactly where CPython's unpickler does (otherwise an
opcode could hide inside what the scan took for an argument), so it is compared with
pickletools.genops on many real pickles of every protocol.
"""

from __future__ import annotations

import collections
import pickle
import pickletools

import pytest
from hypothesis import given, settings, strategies as st

from modelsafe.errors import CorruptCheckpointError, UnsafeObjectError
from modelsafe.legacy.restricted_pickle import restricted_loads, scan_opcodes
from modelsafe.legacy.torch_pickle import ALLOWED_GLOBALS

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=-(2**300), max_value=2**300),
    st.floats(allow_nan=False), st.text(), st.binary(), st.text(alphabet="\n\\\x82\x83\x84.c(", max_size=20),
)
trees = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.tuples(children, children),
        st.dictionaries(st.text(max_size=5), children, max_size=5),
        st.frozensets(st.integers(), max_size=4), st.sets(st.text(max_size=3), max_size=4),
    ),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None)
@given(value=trees, protocol=st.integers(0, 5))
def test_scan_agrees_with_genops_and_plain_values_round_trip(value, protocol):
    data = pickle.dumps(value, protocol=protocol)
    ends = [pos for op, _arg, pos in pickletools.genops(data) if op.name == "STOP"]
    assert scan_opcodes(data, "x") == ends[-1] + 1 == len(data)
    assert scan_opcodes(b"junk" + data, "x", start=4) == len(data) + 4
    back = restricted_loads(data, ALLOWED_GLOBALS, source="x")  # protocols 0-2 spell bytes and sets with globals
    assert back == value


def test_opcode_bytes_inside_arguments_are_data():
    data = pickle.dumps(["\x82\x01", b"\x97\x98", "c\nos\nsystem\n"], protocol=4)
    assert restricted_loads(data, {}, source="x") == ["\x82\x01", b"\x97\x98", "c\nos\nsystem\n"]


@pytest.mark.parametrize(
    "data, error, match",
    [
        (b"\x80\x02\x82\x01.", UnsafeObjectError, "EXT1"),
        (b"\x80\x02\x83\x01\x00.", UnsafeObjectError, "EXT2"),
        (b"\x80\x02\x84\x01\x00\x00\x00.", UnsafeObjectError, "EXT4"),
        (b"\x80\x05\x97.", UnsafeObjectError, "NEXT_BUFFER"),
        (b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R.", UnsafeObjectError, "os.system"),
        (b"\x80\x04\x8c\x02os\x8c\x06system\x93.", UnsafeObjectError, "os.system"),
        (b"(S'ls'\nios\nsystem\n.", UnsafeObjectError, "os.system"),
        (b"c__builtin__\neval\n.", UnsafeObjectError, "builtins.eval"),
        (b"\x80\x02N", CorruptCheckpointError, "no STOP"),
        (b"\x80\x02\xff.", CorruptCheckpointError, "unknown opcode"),
        (b"\x80\x02X\xff\xff\xff\x7fabc.", CorruptCheckpointError, "no STOP"),
        (b"\x80\x02T\xff\xff\xff\xffabc.", CorruptCheckpointError, "negative length"),
        (b"\x80\x02Nr\xff\xff\xff\x7f.", CorruptCheckpointError, "memo slot"),
        (b"\x80\x02Nq\x09.", CorruptCheckpointError, "memo slot"),
        (b"\x80\x02h\x00.", CorruptCheckpointError, "damaged or hostile"),  # GET of an empty slot
        (b"\x80\x02Q.", CorruptCheckpointError, "damaged or hostile"),      # BINPERSID on an empty stack
        (b"\x80\x02N\x81.", CorruptCheckpointError, "damaged or hostile"),   # NEWOBJ of None
    ],
)
def test_refusals(data, error, match):
    with pytest.raises(error, match=match) as exc:
        restricted_loads(data, {"collections.OrderedDict": collections.OrderedDict}, source="file.pkl")
    assert "file.pkl" in str(exc.value)


def test_persistent_ids_need_a_handler():
    data = pickle.dumps(1, protocol=2)[:-1].replace(b"K\x01", b"K\x01Q") + b"."
    with pytest.raises(CorruptCheckpointError, match="external storage"):
        restricted_loads(data, {}, source="x")


def test_allowlisted_callables_are_ours():
    """find_class answers only from the table, whatever the module/name the pickle spells."""
    seen = []
    data = b"\x80\x02cmymod\nf\nK\x05\x85R."
    assert restricted_loads(data, {"mymod.f": lambda x: seen.append(x) or "done"}, source="x") == "done"
    assert seen == [5]


# -- nothing a file does outlives its load: no in-place change of a global -------------------

from legacy_craft import G, assemble, build, call, tup  # noqa: E402


def _complex_of_nothing() -> complex:
    data, _ = assemble({"c": call(G("builtins", "complex"))}, 2)
    return restricted_loads(data, ALLOWED_GLOBALS, source="benign.pkl")["c"]


def _mutations():
    """(label, pickle) pairs that BUILD / SETITEM / APPEND on an allowlisted global, directly or via memo/DUP."""
    defaults = tup(None, {"__defaults__": tup(5.0, 5.0)})
    out = [(f"build-p{p}", assemble([build(G("builtins", "complex"), defaults)], p)[0]) for p in (0, 2, 4)]
    out.append(("build-dtype-record", assemble([build(G("torch", "float32"), tup("float64"))], 2)[0]))
    out.append(("build-storage-record", assemble([build(G("torch", "FloatStorage"), tup("X", "int64"))], 2)[0]))
    glob = b"\x80\x02cbuiltins\ncomplex\n"
    state = b"N}X\x0c\x00\x00\x00__defaults__G@\x14\x00\x00\x00\x00\x00\x00G@\x14\x00\x00\x00\x00\x00\x00\x86s\x86"
    out.append(("via-memo", glob + b"q\x000h\x00" + state + b"b."))           # PUT 0, POP, GET 0, BUILD
    out.append(("via-memoize", b"\x80\x04\x8c\x08builtins\x8c\x07complex\x93\x940h\x00" + state + b"b."))
    out.append(("via-dup", glob + b"2" + state + b"b0."))                     # DUP, BUILD, POP
    out.append(("setitem", glob + b"X\x01\x00\x00\x00aK\x01s."))
    out.append(("setitems", glob + b"(X\x01\x00\x00\x00aK\x01u."))
    out.append(("append", glob + b"K\x01a."))
    out.append(("appends", glob + b"(K\x01e."))
    out.append(("additems", b"\x80\x04\x8c\x08builtins\x8c\x07complex\x93(K\x01\x90."))
    return out


@pytest.mark.parametrize("label, data", _mutations(), ids=[m[0] for m in _mutations()])
def test_a_pickle_cannot_modify_an_allowlisted_global(label, data):
    from modelsafe.legacy import torch_pickle

    saved = (torch_pickle._complex.__defaults__, dict(vars(torch_pickle._complex)))
    records = {k: (v, getattr(v, "__dict__", None) and dict(v.__dict__), [getattr(v, s, None) for s in getattr(v, "__slots__", ())])
               for k, v in ALLOWED_GLOBALS.items()}
    try:
        with pytest.raises((UnsafeObjectError, CorruptCheckpointError)) as info:
            restricted_loads(data, ALLOWED_GLOBALS, source="hostile.pkl")
        assert "hostile.pkl" in str(info.value)
        assert _complex_of_nothing() == 0j  # a later, benign load is not affected
        assert (torch_pickle._complex.__defaults__, dict(vars(torch_pickle._complex))) == saved
        for key, (value, attrs, slots) in records.items():
            assert ALLOWED_GLOBALS[key] is value
            assert (getattr(value, "__dict__", None) and dict(value.__dict__)) == attrs, key
            assert [getattr(value, s, None) for s in getattr(value, "__slots__", ())] == slots, key
    finally:
        torch_pickle._complex.__defaults__ = saved[0]


def test_modifying_what_the_load_itself_made_still_works():
    """BUILD and SETITEMS on objects the pickle created (OrderedDict, numpy arrays) are how real files work."""
    import numpy as np

    from modelsafe.legacy.numpy_pickle import to_numpy

    value = {"od": collections.OrderedDict(a=1), "arr": np.arange(3.0), "s": {1, 2}, "c": 1 + 2j}
    for protocol in (2, 4):
        back = restricted_loads(pickle.dumps(value, protocol=protocol), ALLOWED_GLOBALS, source="x")
        assert back["od"] == value["od"] and list(to_numpy(back["arr"])) == [0.0, 1.0, 2.0] and back["s"] == {1, 2}
        assert back["c"] == 1 + 2j
