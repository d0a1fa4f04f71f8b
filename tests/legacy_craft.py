"""Build pickles and torch files opcode by opcode, for the legacy-reader and malicious-corpus tests.

``Pickle(protocol)`` is a tiny assembler: ``emit(expr)`` writes an expression tree
(globals, calls, strings, containers, INST/OBJ/NEWOBJ/BUILD forms) with the opcodes
that protocol uses — GLOBAL below protocol 4, STACK_GLOBAL from 4 on — and records
every global it emits, in order, so a test knows which one a reader must name first.
``torch_zip`` / ``torch_legacy`` wrap pickles into the two layouts torch.save writes.
"""

from __future__ import annotations

import io
import pickle
import pickletools
import struct
import zipfile
from dataclasses import dataclass, field
from typing import Any

from modelsafe.legacy.restricted_pickle import global_name, scan_opcodes

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


# -- expressions -------------------------------------------------------------------------

def G(module: str, name: str) -> tuple:
    """A global, emitted with the protocol's usual opcode."""
    return ("global", module, name)


def call(fn: Any, *args: Any) -> tuple:
    """fn(*args) through REDUCE."""
    return ("call", fn, list(args))


def inst(module: str, name: str, *args: Any) -> tuple:
    """module.name(*args) through the INST opcode."""
    return ("inst", module, name, list(args))


def obj(fn: Any, *args: Any) -> tuple:
    """fn(*args) through the OBJ opcode."""
    return ("obj", fn, list(args))


def newobj(cls: Any, *args: Any) -> tuple:
    """cls.__new__(cls, *args) through NEWOBJ (protocol >= 2)."""
    return ("newobj", cls, list(args))


def build(target: Any, state: Any) -> tuple:
    return ("build", target, state)


def persid(pid: Any) -> tuple:
    """A persistent id (BINPERSID) whose id is the tuple/expression ``pid``."""
    return ("persid", pid)


def tup(*items: Any) -> tuple:
    return ("tuple", list(items))


def put(slot: int, e: Any) -> tuple:
    """``e``, then memoized in ``slot`` (BINPUT): later ``get(slot)`` pushes the very same object."""
    return ("put", slot, e)


def get(slot: int) -> tuple:
    return ("get", slot)


@dataclass
class Pickle:
    protocol: int
    out: bytearray = field(default_factory=bytearray)
    globals: list = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.protocol >= 2:
            self.out += pickle.PROTO + bytes([self.protocol])

    # scalars
    def string(self, s: str) -> None:
        if self.protocol == 0:
            escaped = s.replace("\\", "\\u005c").replace("\n", "\\u000a").replace("\r", "\\u000d")
            self.out += b"V" + escaped.encode("raw-unicode-escape") + b"\n"
        elif self.protocol >= 4 and len(s.encode()) < 256:
            data = s.encode()
            self.out += b"\x8c" + bytes([len(data)]) + data
        else:
            data = s.encode()
            self.out += b"X" + struct.pack("<I", len(data)) + data

    def bytes_(self, b: bytes) -> None:
        if self.protocol >= 3:
            self.out += b"B" + struct.pack("<I", len(b)) + b
        else:  # what pickle itself does below protocol 3: _codecs.encode(text, 'latin1')
            self.emit(call(G("_codecs", "encode"), b.decode("latin-1"), "latin1"))

    def integer(self, i: int) -> None:
        if self.protocol == 0:
            self.out += b"I" + str(i).encode() + b"\n"
        elif -(2**31) <= i < 2**31:
            self.out += b"J" + struct.pack("<i", i)
        else:
            data = i.to_bytes((i.bit_length() + 8) // 8, "little", signed=True)
            self.out += b"\x8a" + bytes([len(data)]) + data

    def glob(self, module: str, name: str) -> None:
        self.globals.append(f"{module}.{name}")
        if self.protocol >= 4:
            self.string(module)
            self.string(name)
            self.out += b"\x93"
        else:
            self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def emit(self, e: Any) -> None:
        if e is None:
            self.out += b"N"
        elif e is True or e is False:
            self.out += (b"\x88" if e else b"\x89") if self.protocol >= 2 else (b"I01\n" if e else b"I00\n")
        elif isinstance(e, int):
            self.integer(e)
        elif isinstance(e, float):
            self.out += b"G" + struct.pack(">d", e) if self.protocol >= 1 else b"F" + repr(e).encode() + b"\n"
        elif isinstance(e, str):
            self.string(e)
        elif isinstance(e, bytes):
            self.bytes_(e)
        elif isinstance(e, list):
            self.out += b"(" if self.protocol == 0 else b"]("
            for item in e:
                self.emit(item)
            self.out += b"l" if self.protocol == 0 else b"e"
        elif isinstance(e, dict):
            self.out += b"(" if self.protocol == 0 else b"}("
            for k, v in e.items():
                self.emit(k)
                self.emit(v)
            self.out += b"d" if self.protocol == 0 else b"u"
        elif isinstance(e, tuple):
            self._emit_form(e)
        else:
            raise TypeError(f"cannot emit {e!r}")

    def _emit_form(self, e: tuple) -> None:
        kind = e[0]
        if kind == "global":
            self.glob(e[1], e[2])
        elif kind == "tuple":
            self.out += b"("
            for item in e[1]:
                self.emit(item)
            self.out += b"t"
        elif kind == "call":
            self.emit(e[1])
            self.emit(("tuple", e[2]))
            self.out += b"R"
        elif kind == "inst":
            self.globals.append(f"{e[1]}.{e[2]}")
            self.out += b"("
            for item in e[3]:
                self.emit(item)
            self.out += b"i" + e[1].encode() + b"\n" + e[2].encode() + b"\n"
        elif kind == "obj":
            self.out += b"("
            self.emit(e[1])
            for item in e[2]:
                self.emit(item)
            self.out += b"o"
        elif kind == "newobj":
            self.emit(e[1])
            self.emit(("tuple", e[2]))
            self.out += b"\x81"
        elif kind == "build":
            self.emit(e[1])
            self.emit(e[2])
            self.out += b"b"
        elif kind == "persid":
            self.emit(e[1])
            self.out += b"Q"
        elif kind == "put":
            self.emit(e[2])
            self.out += b"q" + bytes([e[1]])
        elif kind == "get":
            self.out += b"h" + bytes([e[1]])
        else:
            raise TypeError(f"unknown form {kind}")

    def finish(self, e: Any) -> bytes:
        self.emit(e)
        self.out += b"."
        return bytes(self.out)


def assemble(expr: Any, protocol: int) -> tuple[bytes, list[str]]:
    """(pickle bytes, globals in emission order) of ``expr``."""
    p = Pickle(protocol)
    data = p.finish(expr)
    return data, p.globals


# -- torch-shaped pieces -------------------------------------------------------------------

def tensor_expr(key: str, numel: int, *, storage: str = "FloatStorage", shape: tuple | None = None,
                stride: tuple | None = None, offset: int = 0, legacy: bool = False) -> tuple:
    """_rebuild_tensor_v2 over storage record ``key`` exactly as torch.save writes it."""
    shape = (numel,) if shape is None else shape
    if stride is None:
        stride, step = [], 1
        for d in reversed(shape):
            stride.append(step)
            step *= max(d, 1)
        stride = tuple(reversed(stride))
    pid = tup("storage", G("torch", storage), key, "cpu", numel, *([None] if legacy else []))
    return call(G("torch._utils", "_rebuild_tensor_v2"), persid(pid), offset, tup(*shape), tup(*stride), False,
                call(G("collections", "OrderedDict")))


def torch_zip(path: Any, data_pkl: bytes, records: dict[str, bytes] | None = None, *, prefix: str = "archive",
              byteorder: str | None = "little", extra: dict[str, bytes] | None = None) -> None:
    """A torch zip file: ``prefix/data.pkl``, ``prefix/data/<key>`` records, byteorder and version."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", data_pkl)
        if byteorder is not None:
            z.writestr(f"{prefix}/byteorder", byteorder)
        for key, data in (records or {}).items():
            z.writestr(f"{prefix}/data/{key}", data)
        z.writestr(f"{prefix}/version", "3\n")
        for name, data in (extra or {}).items():
            z.writestr(f"{prefix}/{name}", data)


def legacy_header(*, magic_pickle: bytes | None = None, sys_info_pickle: bytes | None = None) -> bytes:
    magic = magic_pickle if magic_pickle is not None else pickle.dumps(LEGACY_MAGIC, protocol=2)
    version = pickle.dumps(1001, protocol=2)
    info = sys_info_pickle if sys_info_pickle is not None else pickle.dumps(
        {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2)
    return magic + version + info


def torch_legacy(path: Any, main_pickle: bytes, storages: list[tuple[str, int, bytes]] = (), *,
                 magic_pickle: bytes | None = None, sys_info_pickle: bytes | None = None) -> None:
    """A legacy (non-zip) torch file: header pickles, the main pickle, keys, then (count, bytes) per storage."""
    buf = io.BytesIO()
    buf.write(legacy_header(magic_pickle=magic_pickle, sys_info_pickle=sys_info_pickle))
    buf.write(main_pickle)
    buf.write(pickle.dumps([key for key, _, _ in storages], protocol=2))
    for _key, count, data in storages:
        buf.write(struct.pack("<q", count))
        buf.write(data)
    with open(path, "wb") as f:
        f.write(buf.getvalue())


# -- reading pickles back ----------------------------------------------------------------

def main_pickle(path: Any, legacy: bool) -> bytes:
    """The object pickle of a torch file (zip: data.pkl; legacy: the fourth pickle)."""
    if not legacy:
        with zipfile.ZipFile(path) as z:
            return z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    blob = open(path, "rb").read()
    pos = 0
    for _ in range(3):  # magic, protocol version, sys_info
        pos = scan_opcodes(blob, "x", pos)
    return blob[pos : scan_opcodes(blob, "x", pos)]


def globals_in(data: bytes) -> list[str]:
    """Globals a pickle names, in order (GLOBAL and STACK_GLOBAL, memoized strings followed)."""
    names, pushed, memo = [], [], {}
    for op, arg, _pos in pickletools.genops(data):
        if op.name == "GLOBAL":
            names.append(global_name(*arg.split(" ", 1)))
            pushed.append(None)
        elif op.name == "STACK_GLOBAL":
            names.append(global_name(pushed[-2], pushed[-1]))
            pushed.append(None)
        elif op.name in ("MEMOIZE",):
            memo[len(memo)] = pushed[-1]
        elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[arg] = pushed[-1]
        elif op.name in ("GET", "BINGET", "LONG_BINGET"):
            pushed.append(memo.get(arg))
        elif op.name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE"):
            pushed.append(arg)
        else:
            pushed.append(None)
    return names


# -- archives whose members expand -----------------------------------------------------------

def npy_header(shape: tuple, descr: str = "|u1") -> bytes:
    """A version 1.0 ``.npy`` header for ``shape`` (any ints: the header need not be honest)."""
    import numpy as np

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def _deflated_zeros(prefix: bytes, mib: int) -> tuple[bytes, int]:
    """(raw deflate stream, CRC-32) of ``prefix`` + ``mib`` MiB of zeros, built in milliseconds: after a full
    flush deflate forgets its history, so every further MiB of zeros compresses to the same bytes."""
    import zlib

    zeros = bytes(1 << 20)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(prefix + zeros) + c.flush(zlib.Z_FULL_FLUSH)
    again = c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    assert again == c.compress(zeros) + c.flush(zlib.Z_FULL_FLUSH)
    stream = first + again * (mib - 1) + c.flush()
    crc = zlib.crc32(prefix)
    for _ in range(mib):
        crc = zlib.crc32(zeros, crc)
    return stream, crc


def zip_with_deflated(path: Any, name: str, prefix: bytes, mib: int) -> None:
    """A one-member zip (deflated, under 4 GiB) whose member is ``prefix`` + ``mib`` MiB of zeros."""
    data, crc = _deflated_zeros(prefix, mib)
    size = len(prefix) + (mib << 20)
    raw_name = name.encode()
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0x21, crc, len(data), size, len(raw_name), 0)
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0x21, crc, len(data), size,
                          len(raw_name), 0, 0, 0, 0, 0, 0) + raw_name
    offset = len(local) + len(raw_name) + len(data)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), offset, 0)
    with open(path, "wb") as f:
        f.write(local + raw_name + data + central + end)


def npz_deflate_bomb(path: Any, mib: int, member: str = "w.npy") -> None:
    """A valid ``np.savez_compressed``-style archive of ``mib`` MiB of uint8 zeros in one member (about 1 KB per MiB)."""
    zip_with_deflated(path, member, npy_header((mib << 20,)), mib)
