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
