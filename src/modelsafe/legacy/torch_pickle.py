"""Read ``torch.save`` files without running any code from them.

Both layouts torch writes are understood:

* the zip format (torch >= 1.6): ``<archive>/data.pkl`` (the object pickle),
  ``<archive>/data/<key>`` (one record of raw bytes per storage), ``byteorder`` and
  ``version`` records;
* the legacy format (``_use_new_zipfile_serialization=False``): a magic-number pickle,
  the protocol version, a sys_info dict, the object pickle, the list of storage keys,
  then for each key an int64 element count and the raw bytes.

Every pickle goes through :mod:`.restricted_pickle` with the allowlist below: the
stand-ins build inert records (:class:`TensorRef`, :class:`StorageRef`, ...) and never
touch torch.  Storage sizes declared in the pickle are checked against the bytes the
file really holds *before* anything is allocated, and every tensor's view is
bounds-checked against its storage.  Only then are tensors made — torch tensors that
share storage exactly as ``torch.load`` would (tied weights stay tied), or numpy
arrays when torch is not installed.  TorchScript archives hold code and are refused.

>>> import torch, tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "sd.pt")
>>> torch.save({"w": torch.arange(3.0)}, p)
>>> read(p, ReadOptions()).tree
{'w': tensor([0., 1., 2.])}
"""

from __future__ import annotations

import collections
import importlib.util
import math
import mmap
import os
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass, replace
from typing import Any, Callable

import numpy as np

from ..errors import CorruptCheckpointError, FrameworkNotInstalledError, UnsafeObjectError, UnsupportedObjectError
from ..format import dtypes
from . import MAX_TENSOR_BYTES, Budget, ForeignFile, ReadOptions, checked_shape, regular_file_size
from .numpy_pickle import NUMPY_GLOBALS, NumpyArray, NumpyScalar, to_numpy
from .restricted_pickle import Refused, restricted_loads, scan_opcodes

__all__ = ["read", "load_torch_file", "LEGACY_MAGIC", "LEGACY_MAGIC_PICKLE", "TensorRef", "StorageRef"]

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_MAGIC_PICKLE = b"\x80\x02\x8a\x0a" + LEGACY_MAGIC.to_bytes(10, "little")
LEGACY_PROTOCOL_VERSION = 1001
MAX_DIMS = 64
MAX_TREE_NODES = 5_000_000       # containers and leaves after expanding shared references
MAX_DEPTH = 400
# What one tree node costs once shared references are expanded (its Python objects while
# converting, its skeleton entry and JSON in the output); 5M nodes measured ~40 bytes each of
# RSS and 20 s to write, from a 16 KB pickle sharing one list 1,000 times.
NODE_BYTES = 64
_KEY_RE = re.compile(r"[A-Za-z0-9_.\-]{1,200}\Z")


# -- inert stand-ins built by the unpickler ---------------------------------------------

@dataclass(frozen=True, slots=True, eq=False)
class StorageType:
    """A torch storage class named in a persistent id; ``dtype`` None means untyped bytes."""

    name: str
    dtype: str | None


@dataclass(frozen=True, slots=True, eq=False)
class StorageRef:
    """One storage record of the file: ``numel`` elements of ``dtype`` (uint8 for untyped)."""

    key: str
    dtype: str
    numel: int
    location: str
    byte_offset: int = 0       # legacy storage views: offset into the root storage
    typed: bool = True

    @property
    def nbytes(self) -> int:
        return self.numel * dtypes.BY_NAME[self.dtype].itemsize


@dataclass(frozen=True, slots=True, eq=False)
class TensorRef:
    """A tensor as the pickle describes it; bounds are checked before it is made."""

    storage: StorageRef
    offset: int
    shape: tuple
    stride: tuple
    dtype: str
    requires_grad: bool = False
    parameter: bool = False


@dataclass(frozen=True, slots=True)
class TorchDType:
    name: str


@dataclass(frozen=True, slots=True)
class TorchDevice:
    spec: str


@dataclass(frozen=True, slots=True)
class TorchSize:
    dims: tuple


@dataclass(frozen=True, slots=True, eq=False)
class TensorClass:
    """torch.Tensor / torch.nn.Parameter named as the type argument of _rebuild_from_type_v2."""

    name: str


# -- the allowlist -----------------------------------------------------------------------

_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
_QUANTIZED_STORAGES = ("QInt8Storage", "QUInt8Storage", "QInt32Storage", "QUInt4x2Storage", "QUInt2x4Storage")
_TORCH_DTYPE_NAMES = tuple(dtypes.BY_NAME)


def _require(condition: bool, what: str) -> None:
    if not condition:
        raise Refused(what)


def _is_int(value: Any) -> bool:
    return type(value) is int


def _dims(value: Any, what: str) -> tuple:
    if type(value) is TorchSize:
        value = value.dims
    _require(type(value) in (tuple, list) and len(value) <= MAX_DIMS, f"tensor {what} {value!r:.80} is not a tuple")
    for d in value:
        if type(d) is not int or not 0 <= d <= MAX_TENSOR_BYTES:  # bounded before any arithmetic on them
            raise Refused(f"tensor {what} {value!r:.80} holds a negative, non-integer or impossibly large entry")
    return tuple(value)


def _empty_hooks(hooks: Any) -> None:
    _require(hooks is None or (isinstance(hooks, dict) and not hooks), "tensor backward hooks must be empty")


def _check_metadata(metadata: Any) -> None:
    if metadata:
        raise UnsupportedObjectError(f"a tensor carries torch metadata {metadata!r:.80}, which modelsafe cannot store")


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None = None, requires_grad: Any = False) -> TensorRef:
    _require(isinstance(storage, StorageRef), f"a tensor is built from {type(storage).__name__}, not a storage")
    _require(_is_int(offset) and offset >= 0, f"tensor storage offset {offset!r:.40} is not a non-negative integer")
    shape, strides = _dims(size, "shape"), _dims(stride, "stride")
    _require(len(shape) == len(strides), f"tensor shape {shape} and stride {strides} differ in length")
    _require(type(requires_grad) is bool, "requires_grad must be a bool")
    dtype = dtype or storage.dtype
    _require(dtype == storage.dtype or not storage.typed, f"a {dtype} tensor views a {storage.dtype} storage")
    return TensorRef(storage, offset, shape, strides, dtype, requires_grad)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks, metadata=None):
    _empty_hooks(backward_hooks)
    _check_metadata(metadata)
    return _tensor(storage, storage_offset, size, stride, requires_grad=requires_grad)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    _empty_hooks(backward_hooks)
    _check_metadata(metadata)
    _require(isinstance(dtype, TorchDType), "_rebuild_tensor_v3 needs a torch dtype")
    return _tensor(storage, storage_offset, size, stride, dtype.name, requires_grad)


def _rebuild_parameter(data, requires_grad, backward_hooks):
    _require(isinstance(data, TensorRef), "a Parameter must wrap a tensor")
    _require(type(requires_grad) is bool, "requires_grad must be a bool")
    _empty_hooks(backward_hooks)
    return replace(data, parameter=True, requires_grad=requires_grad)


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    if state:
        raise UnsupportedObjectError(
            f"a Parameter carries Python attributes {sorted(state)!r:.80}, which modelsafe cannot store"
        )
    return _rebuild_parameter(data, requires_grad, backward_hooks)


_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter, _rebuild_parameter_with_state)


def _rebuild_from_type_v2(func, new_type, args, state):
    _require(func in _REBUILDERS, "_rebuild_from_type_v2 may only call a tensor rebuild function")
    _require(isinstance(new_type, TensorClass), "_rebuild_from_type_v2 needs torch.Tensor or torch.nn.Parameter")
    _require(isinstance(args, tuple), "_rebuild_from_type_v2 arguments must be a tuple")
    if state:
        raise UnsupportedObjectError(f"a tensor carries Python attributes {state!r:.80}, which modelsafe cannot store")
    result = func(*args)
    if new_type.name == "torch.nn.parameter.Parameter" and isinstance(result, TensorRef):
        result = replace(result, parameter=True)
    return result


def _ordered_dict(*args):
    _require(len(args) <= 1, "OrderedDict takes at most one argument")
    if args:
        _require(isinstance(args[0], (list, tuple, dict)), "OrderedDict needs a list of pairs")
    return collections.OrderedDict(*args)


def _iterable_arg(args: tuple, what: str) -> tuple:
    _require(len(args) <= 1, f"{what} takes at most one argument")
    if args:
        _require(isinstance(args[0], (list, tuple, set, frozenset)), f"{what} needs a list")
    return args


def _set(*args):
    return set(*_iterable_arg(args, "set"))


def _frozenset(*args):
    return frozenset(*_iterable_arg(args, "frozenset"))


def _slice(*args):
    _require(1 <= len(args) <= 3 and all(a is None or _is_int(a) for a in args), "slice takes up to three integers")
    return slice(*args)


def _complex(real=0.0, imag=0.0):
    _require(all(type(v) in (int, float) for v in (real, imag)), "complex takes two numbers")
    return complex(real, imag)


def _encode(text, encoding="utf-8"):
    _require(isinstance(text, str) and encoding in ("latin1", "latin-1"), "_codecs.encode is allowed for latin-1 bytes only")
    return text.encode("latin-1")


def _bytearray(*args):
    _require(len(args) <= 2, "bytearray takes at most two arguments")
    if len(args) == 2:
        return bytearray(_encode(*args))
    _require(not args or isinstance(args[0], (bytes, bytearray)), "bytearray needs bytes")
    return bytearray(*args)


def _bytes(*args):
    _require(not args or (len(args) == 1 and isinstance(args[0], (bytes, bytearray))), "bytes takes bytes only")
    return bytes(*args)


def _torch_size(dims=()):
    return TorchSize(_dims(dims, "size"))


_DEVICE_RE = re.compile(r"[a-z][a-z0-9_]{0,31}(:[0-9]{1,5})?\Z")


def _torch_device(spec, index=None):
    _require(isinstance(spec, str) and (index is None or (_is_int(index) and 0 <= index < 1 << 16)),
             "torch.device takes a device name and a small index")
    spec = spec if index is None else f"{spec}:{index}"
    _require(_DEVICE_RE.match(spec) is not None, f"torch.device {spec!r:.60} is not a device name")
    return TorchDevice(spec)


def _device_value(m: Any, d: TorchDevice) -> Any:
    if m.framework != "torch":
        return d.spec
    try:
        return m._torch().device(d.spec)
    except RuntimeError:
        raise Refused(f"torch.device {d.spec!r} names no device type this torch knows") from None


def _allowed_globals() -> dict[str, Any]:
    table: dict[str, Any] = {
        "collections.OrderedDict": _ordered_dict,
        "builtins.set": _set,
        "builtins.frozenset": _frozenset,
        "builtins.slice": _slice,
        "builtins.complex": _complex,
        "builtins.bytearray": _bytearray,
        "builtins.bytes": _bytes,  # b"" below protocol 3
        "_codecs.encode": _encode,
        "torch.Size": _torch_size,
        "torch.device": _torch_device,
        "torch.Tensor": TensorClass("torch.Tensor"),
        "torch.nn.parameter.Parameter": TensorClass("torch.nn.parameter.Parameter"),
        "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
        "torch.storage.UntypedStorage": StorageType("UntypedStorage", None),
        "torch.UntypedStorage": StorageType("UntypedStorage", None),
    }
    for fn in _REBUILDERS:
        table[f"torch._utils.{fn.__name__}"] = fn
    for module in ("torch", "torch.cuda"):
        for name, dtype in _STORAGE_DTYPES.items():
            table[f"{module}.{name}"] = StorageType(name, dtype)
    for name in _TORCH_DTYPE_NAMES:
        table[f"torch.{name}"] = TorchDType(name)
    table.update(NUMPY_GLOBALS)  # numpy arrays, scalars and dtypes (loss values, RNG states, metrics)
    return table


def _unsupported_globals() -> dict[str, str]:
    table = {
        "torch._utils._rebuild_qtensor": "a quantized tensor; dequantize() it before saving",
        "torch._utils._rebuild_sparse_tensor": "a sparse tensor; save .to_dense() instead",
        "torch._utils._rebuild_nested_tensor": "a nested tensor",
        "torch._utils._rebuild_meta_tensor_no_storage": "a meta tensor, which has no data",
        "torch._utils._rebuild_wrapper_subclass": "a tensor subclass",
        "torch._utils._rebuild_device_tensor_from_numpy": "a device tensor stored through numpy",
        "torch._utils._rebuild_device_tensor_from_cpu_tensor": "a device tensor of an accelerator backend",
        "torch.serialization._get_layout": "a sparse tensor layout",
    }
    for module in ("torch", "torch.cuda"):
        for name in _QUANTIZED_STORAGES:
            table[f"{module}.{name}"] = "a quantized storage; dequantize() the tensor before saving"
    for name in ("qint8", "quint8", "qint32", "quint4x2", "quint2x4"):
        table[f"torch.{name}"] = "a quantized dtype"
    return table


ALLOWED_GLOBALS = _allowed_globals()
UNSUPPORTED_GLOBALS = _unsupported_globals()


# -- persistent ids -> storage records ---------------------------------------------------------

class StorageTable:
    """Turns persistent ids into StorageRefs, checking each against the bytes the file holds."""

    def __init__(self, source: str, record_size: Callable[[str], int | None], *, legacy: bool) -> None:
        self.source = source
        self.record_size = record_size   # key -> bytes available (zip) or None when unknown yet (legacy)
        self.legacy = legacy
        self.storages: dict[str, StorageRef] = {}

    def __call__(self, pid: Any) -> StorageRef:
        if isinstance(pid, tuple) and pid and pid[0] == "module":
            raise UnsafeObjectError(
                f"{self.source}: holds a pickled torch.nn.Module class with its source code (torch.save(model)); "
                "modelsafe never runs code from a file. Save model.state_dict() instead",
                path=self.source, key="module",
            )
        _require(isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == "storage",
                 f"unknown persistent id {pid!r:.100}")
        _, storage_type, key, location, numel = pid[:5]
        view = pid[5] if len(pid) == 6 else None
        _require(isinstance(storage_type, StorageType), f"persistent id names {type(storage_type).__name__}, not a storage type")
        _require(isinstance(key, str) and _KEY_RE.match(key) is not None, f"storage key {key!r:.60} is not valid")
        _require(isinstance(location, str) and len(location) < 64, "storage location must be a device name")
        _require(_is_int(numel) and numel >= 0, f"storage size {numel!r:.40} is not a non-negative integer")
        dtype = storage_type.dtype or "uint8"
        ref = StorageRef(key, dtype, numel, location, 0, storage_type.dtype is not None)
        ref = self._register(ref)
        if view is not None:
            _require(self.legacy and isinstance(view, tuple) and len(view) == 3, "malformed storage view")
            view_key, view_offset, view_size = view
            _require(isinstance(view_key, str) and _KEY_RE.match(view_key) is not None and _is_int(view_offset)
                     and _is_int(view_size) and view_offset >= 0 and view_size >= 0, "malformed storage view")
            _require(view_offset + view_size <= ref.numel, f"storage view of {view_size} elements at {view_offset} "
                     f"lies outside its {ref.numel}-element storage")
            itemsize = dtypes.BY_NAME[dtype].itemsize
            return StorageRef(key, dtype, view_size, location, view_offset * itemsize, ref.typed)
        return ref

    def _register(self, ref: StorageRef) -> StorageRef:
        known = self.storages.get(ref.key)
        if known is not None:
            _require(known.nbytes == ref.nbytes, f"storage {ref.key} is declared with two different sizes")
            return known if known.typed or not ref.typed else ref
        available = self.record_size(ref.key)
        if not self.legacy:
            if available is None:
                raise CorruptCheckpointError(f"{self.source}: storage record data/{ref.key} is missing", path=self.source, key=ref.key)
            if available != ref.nbytes:
                raise CorruptCheckpointError(
                    f"{self.source}: storage {ref.key} declares {ref.numel} x {ref.dtype} = {ref.nbytes:,} bytes but its "
                    f"record holds {available:,} bytes; refused before allocating (damaged or hostile file)",
                    path=self.source, key=ref.key,
                )
        elif available is not None and ref.nbytes > available:
            raise CorruptCheckpointError(
                f"{self.source}: storage {ref.key} declares {ref.nbytes:,} bytes but the whole file holds only "
                f"{available:,}; refused before allocating (damaged or hostile file)",
                path=self.source, key=ref.key,
            )
        self.storages[ref.key] = ref
        return ref


def _hint(name: str) -> str:
    if name.startswith(("torch.nn.", "torch.optim.")):
        return ("The file pickles whole Python objects (torch.save(model) or similar); save model.state_dict() "
                "/ optimizer.state_dict() with torch.save and convert that, or load it with torch in a sandbox")
    return ("If the file is a whole pickled model or other Python object (torch.save(model)) and you trust it, "
            "load it with torch in a sandbox, torch.save its state_dict(), and convert that")


def _load_objects(data: bytes, source: str, storages: StorageTable | None) -> Any:
    return restricted_loads(data, ALLOWED_GLOBALS, source=source, persistent_load=storages,
                            unsupported=UNSUPPORTED_GLOBALS, hint=_hint)


# -- containers ----------------------------------------------------------------------------

@dataclass
class Loaded:
    """The unpickled tree (stand-ins inside) and the bytes of every storage, by key."""

    tree: Any
    storage_bytes: dict[str, np.ndarray]
    big_endian: bool
    notes: list


def _corrupt(source: str, what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"{source}: {what}", path=source)


def _map_file(path: str) -> np.ndarray:
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return np.empty(0, np.uint8)
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    return np.frombuffer(mm, dtype=np.uint8)


def _zip_records(path: str, source: str) -> tuple[str, dict[str, tuple[int, int, int]]]:
    """(archive prefix, name -> (data offset, size, CRC-32)) of a torch zip file, every record validated."""
    file_size = os.path.getsize(path)
    try:
        with open(path, "rb") as f, zipfile.ZipFile(f) as z:
            infos = z.infolist()
            pkls = [i.filename for i in infos if i.filename.endswith("data.pkl") and i.filename.count("/") <= 1]
            names = [i.filename for i in infos]
            if any(n.endswith("constants.pkl") or "/code/" in n or n.startswith("code/") for n in names):
                raise UnsafeObjectError(
                    f"{source}: is a TorchScript archive (it holds compiled code: constants.pkl / code/); modelsafe "
                    "never runs code from a file. In a trusted environment, torch.jit.load it, save its "
                    "state_dict() with torch.save, and convert that",
                    path=source, key="code",
                )
            if len(pkls) != 1:
                raise _corrupt(source, f"a torch zip file holds exactly one data.pkl; this one holds {len(pkls)}")
            prefix = pkls[0][: -len("data.pkl")]
            records: dict[str, tuple[int, int, int]] = {}
            for info in infos:
                if not info.filename.startswith(prefix):
                    continue
                if info.compress_type != zipfile.ZIP_STORED:
                    raise _corrupt(source, f"record {info.filename} is compressed; torch stores records uncompressed")
                if not 0 <= info.header_offset <= file_size - 30:
                    raise _corrupt(source, f"record {info.filename} starts outside the file")
                f.seek(info.header_offset)
                local = f.read(30)
                if len(local) != 30 or local[:4] != b"PK\x03\x04":
                    raise _corrupt(source, f"record {info.filename} has no valid local header")
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                start = info.header_offset + 30 + name_len + extra_len
                if start + info.file_size > file_size or info.compress_size != info.file_size:
                    raise _corrupt(source, f"record {info.filename} claims {info.file_size:,} bytes beyond the end of the file")
                records[info.filename[len(prefix):]] = (start, info.file_size, info.CRC)
    except (zipfile.BadZipFile, ValueError, struct.error, EOFError, NotImplementedError, RuntimeError) as exc:
        raise _corrupt(source, f"is not a valid zip archive ({type(exc).__name__}: {exc})") from None
    return prefix, records


def _load_zip(path: str, source: str) -> Loaded:
    _prefix, records = _zip_records(path, source)
    blob = _map_file(path)

    def record(name: str) -> np.ndarray:
        start, size, crc = records[name]
        data = blob[start : start + size]
        if zlib.crc32(data) != crc:
            raise CorruptCheckpointError(
                f"{source}: record {name} fails its CRC-32 check; the file is damaged (restore it or save it again)",
                path=source, key=name,
            )
        return data

    byteorder = "little"
    if "byteorder" in records:
        byteorder = record("byteorder").tobytes().decode("ascii", "replace").strip()
        if byteorder not in ("little", "big"):
            raise _corrupt(source, f"byteorder record says {byteorder!r:.40}")

    def record_size(key: str) -> int | None:
        found = records.get(f"data/{key}")
        return None if found is None else found[1]  # sizes are checked before any record is read

    table = StorageTable(source, record_size, legacy=False)
    tree = _load_objects(record("data.pkl").tobytes(), source, table)
    storage_bytes = {key: record(f"data/{key}") for key in table.storages}
    return Loaded(tree, storage_bytes, byteorder == "big", [])


class _PickleStream:
    """Consecutive pickles in one buffer: each is scanned, cut out and unpickled through the allowlist."""

    def __init__(self, buf: Any, source: str) -> None:
        self.buf = buf
        self.pos = 0
        self.source = source

    def load(self, storages: StorageTable | None = None) -> Any:
        end = scan_opcodes(self.buf, self.source, self.pos)
        data = bytes(self.buf[self.pos : end])
        self.pos = end
        return restricted_loads(data, ALLOWED_GLOBALS, source=self.source, persistent_load=storages,
                                unsupported=UNSUPPORTED_GLOBALS, hint=_hint, scanned=True)

    def take(self, n: int) -> np.ndarray:
        out = np.frombuffer(self.buf[self.pos : self.pos + n], np.uint8).copy() if n else np.empty(0, np.uint8)
        self.pos += n
        return out

    def left(self) -> int:
        return len(self.buf) - self.pos


def _load_stream(path: str, source: str) -> Loaded:
    """Legacy (non-zip) torch files, and plain pickles that hold no tensors."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        blob: Any = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    if len(blob) >= 262 and blob[257:262] == b"ustar":
        raise UnsupportedObjectError(
            f"{source}: is a tar-format torch file (torch < 0.4); load it with an old torch in a sandbox and "
            "re-save its state_dict", path=source,
        )
    stream = _PickleStream(blob, source)
    first = stream.load()
    if type(first) is not int or first != LEGACY_MAGIC:
        if stream.left():
            raise _corrupt(source, "is neither a torch zip file nor a legacy torch file (wrong magic number)")
        return Loaded(first, {}, False, ["read as a plain pickle (no torch storages)"])
    version = stream.load()
    if version != LEGACY_PROTOCOL_VERSION:
        raise _corrupt(source, f"legacy torch protocol version {version!r:.40} is not {LEGACY_PROTOCOL_VERSION}")
    sys_info = stream.load()
    if not isinstance(sys_info, dict):
        raise _corrupt(source, "legacy torch sys_info is not a dict")
    big_endian = sys_info.get("little_endian", True) is False
    table = StorageTable(source, lambda key: len(blob), legacy=True)
    tree = stream.load(table)
    keys = stream.load()
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)) or len(set(keys)) != len(keys):
        raise _corrupt(source, "legacy torch storage key list is malformed")
    if set(keys) != set(table.storages):
        raise _corrupt(source, "legacy torch storage key list does not match the storages the objects use")
    storage_bytes: dict[str, np.ndarray] = {}
    for key in keys:
        ref = table.storages[key]
        if stream.left() < 8:
            raise _corrupt(source, f"file ends before storage {key}")
        (count,) = struct.unpack("<q", stream.take(8).tobytes())
        if count != ref.numel:
            raise _corrupt(source, f"storage {key} holds {count} elements but the objects declare {ref.numel}")
        if ref.nbytes > stream.left():
            raise CorruptCheckpointError(
                f"{source}: storage {key} declares {ref.nbytes:,} bytes but only {stream.left():,} remain in the file; "
                "refused before allocating (damaged or hostile file)", path=source, key=key,
            )
        storage_bytes[key] = stream.take(ref.nbytes)  # a copy: legacy records are not aligned
    return Loaded(tree, storage_bytes, big_endian, [])


# -- making tensors --------------------------------------------------------------------------

class TensorFactory:
    """Makes tensors of one framework from storage bytes; tensors over one storage share it.

    Identical views (same storage, dtype, offset, shape, stride and flags) are made once and
    shared, so they are written once (tied); every distinct view is charged to ``budget``
    before it is made, so overlapping or broadcast views cannot multiply the file.
    """

    def __init__(self, framework: str, loaded: Loaded, source: str, budget: Budget) -> None:
        self.framework = framework
        self.loaded = loaded
        self.source = source
        self.budget = budget
        self._made: dict[tuple, Any] = {}
        self._bases: dict[int, Any] = {}
        self._typed: dict[tuple[str, str], Any] = {}
        self.notes = loaded.notes
        if framework == "torch":
            import torch

            self.torch = torch

    def base(self, ref: StorageRef, dtype: str) -> np.ndarray:
        """The storage's bytes, converted to little-endian first for big-endian files."""
        raw = self.loaded.storage_bytes[ref.key]
        dt = dtypes.BY_NAME[dtype]
        unit = dt.itemsize // 2 if dt.name.startswith("complex") else dt.itemsize
        if not self.loaded.big_endian or unit == 1:
            return raw
        key = f"{ref.key}#swapped{unit}"
        swapped = self.loaded.storage_bytes.get(key)
        if swapped is None:
            swapped = raw.copy()
            usable = len(swapped) // unit * unit
            swapped[:usable].view(f"u{unit}").byteswap(inplace=True)
            self.loaded.storage_bytes[key] = swapped
        return swapped

    def make(self, ref: TensorRef) -> Any:
        dt = dtypes.BY_NAME.get(ref.dtype)
        if dt is None:
            raise CorruptCheckpointError(f"{self.source}: unknown tensor dtype {ref.dtype}", path=self.source)
        storage = ref.storage
        numel = self._check_view(ref, dt.itemsize)
        identity = (storage.key, storage.byte_offset, ref.dtype, ref.offset, ref.shape, ref.stride, ref.parameter,
                    ref.requires_grad)
        made = self._made.get(identity)
        if made is not None:
            return made
        self.budget.charge(numel * dt.itemsize, f"a {ref.dtype} view {list(ref.shape)} of storage {storage.key}")
        if storage.location != "cpu":
            self.notes.append(f"storages saved on {storage.location} are converted as CPU tensors")
        made = self._make_torch(ref, dt, numel) if self.framework == "torch" else self._make_numpy(ref, dt, numel)
        self._made[identity] = made
        return made

    def _check_view(self, ref: TensorRef, itemsize: int) -> int:
        """The view's element count, once shape, strides and offset are known to stay inside its storage."""
        storage = ref.storage
        available = storage.nbytes // itemsize
        shape = checked_shape(ref.shape, itemsize, self.source, f"a tensor over storage {storage.key}")
        numel = math.prod(shape)
        last = ref.offset + sum((d - 1) * s for d, s in zip(shape, ref.stride)) if numel else ref.offset - 1
        too_far = max(ref.stride, default=0) * itemsize > MAX_TENSOR_BYTES or ref.offset > available
        if too_far or last >= available:
            raise CorruptCheckpointError(
                f"{self.source}: a {ref.dtype} tensor of shape {list(ref.shape)} (offset {ref.offset}, stride "
                f"{list(ref.stride)}) reaches element {max(last, ref.offset)} of storage {storage.key}, which holds "
                f"{available}; the file is damaged or hostile", path=self.source, key=storage.key,
            )
        return numel

    def _window(self, ref: TensorRef, dt: dtypes.DType) -> tuple[np.ndarray, str]:
        storage = ref.storage
        raw = self.base(storage, dt.name)
        begin = storage.byte_offset
        usable = storage.nbytes // dt.itemsize * dt.itemsize
        return raw[begin : begin + usable], f"{storage.key}@{begin}:{dt.name}"

    def _make_torch(self, ref: TensorRef, dt: dtypes.DType, numel: int) -> Any:
        torch = self.torch
        from ..adapters.torch.tensors import torch_dtype

        tdt = torch_dtype(dt.name)
        window, key = self._window(ref, dt)
        typed = self._typed.get(key)
        if typed is None:
            full = self.base(ref.storage, dt.name)
            u8 = self._bases.get(id(full))
            if u8 is None:
                u8 = torch.from_numpy(full) if full.size else torch.empty(0, dtype=torch.uint8)
                self._bases[id(full)] = u8
            begin = ref.storage.byte_offset
            typed = u8[begin : begin + window.size]
            if dt.itemsize > 1 or tdt != torch.uint8:
                typed = typed.view(tdt)
            self._typed[key] = typed
        t = typed.as_strided(ref.shape, ref.stride, typed.storage_offset() + ref.offset) if numel else torch.empty(ref.shape, dtype=tdt)
        if ref.parameter:
            return torch.nn.Parameter(t, requires_grad=ref.requires_grad)
        if ref.requires_grad:
            t.requires_grad_(True)
        return t

    def _make_numpy(self, ref: TensorRef, dt: dtypes.DType, numel: int) -> np.ndarray:
        npdt = dtypes.numpy_dtype(dt)
        if npdt is None:
            raise UnsupportedObjectError(f"{self.source}: numpy has no dtype {dt.name}; convert with torch installed", path=self.source)
        if not numel:
            return np.empty(ref.shape, dtype=npdt)
        window, _ = self._window(ref, dt)
        typed = window.view(npdt)
        strides = tuple(s * dt.itemsize for s in ref.stride)
        return np.lib.stride_tricks.as_strided(typed[ref.offset :], shape=ref.shape, strides=strides)


class _Materializer:
    """Replaces stand-ins by real objects; refuses cycles, depth and expanded size beyond the limits."""

    def __init__(self, factory: TensorFactory, source: str, framework: str) -> None:
        self.factory = factory
        self.source = source
        self.framework = framework
        self.done: dict[int, Any] = {}
        self.active: set[int] = set()
        self.sizes: dict[int, tuple[int, int]] = {}

    def expanded_size(self, root: Any) -> tuple[int, int]:
        """(nodes, bytes of str/bytes leaves) of the tree with every shared reference expanded: what a
        tree walk visits and what the output writes (a string or bytes value is written once per reference)."""
        stack = [(root, False)]
        while stack:
            obj, ready = stack.pop()
            children = _children(obj)
            if children is None:
                continue
            key = id(obj)
            if key in self.sizes:
                continue
            if ready:
                sizes = [self.sizes.get(id(c)) or (1, _leaf_bytes(c)) for c in children]
                self.sizes[key] = (1 + sum(n for n, _ in sizes), sum(b for _, b in sizes))
                continue
            if key in self.active:
                raise _corrupt(self.source, "the pickled objects contain themselves (a reference cycle)")
            self.active.add(key)
            stack.append((obj, True))
            stack.extend((c, False) for c in children)
        self.active.clear()
        return self.sizes.get(id(root)) or (1, _leaf_bytes(root))

    def run(self, root: Any) -> Any:
        total, leaf_bytes = self.expanded_size(root)
        if total > MAX_TREE_NODES:
            raise _corrupt(self.source, f"the pickled objects expand to {total:,} nodes (limit {MAX_TREE_NODES:,}); refused")
        self.factory.budget.charge(total * NODE_BYTES + leaf_bytes, f"the object tree ({total:,} nodes and "
                                   f"{leaf_bytes:,} bytes of strings and bytes values, counted once per reference)")
        return self.convert(root, 0)

    def convert(self, obj: Any, depth: int) -> Any:
        tp = type(obj)
        if obj is None or tp in (bool, int, float, str, bytes, bytearray, complex, slice):
            return obj
        key = id(obj)
        if key in self.done:
            return self.done[key]
        if depth > MAX_DEPTH:
            raise _corrupt(self.source, f"the pickled objects nest deeper than {MAX_DEPTH} levels")
        if tp is list:
            out: Any = []
            self.done[key] = out
            out.extend(self.convert(v, depth + 1) for v in obj)
        elif tp is tuple:
            out = tuple(self.convert(v, depth + 1) for v in obj)
        elif tp in (dict, collections.OrderedDict):
            out = tp()
            self.done[key] = out
            for k, v in obj.items():
                out[self.convert_key(k)] = self.convert(v, depth + 1)
            meta = getattr(obj, "__dict__", {}).get("_metadata")
            if meta is not None:
                out._metadata = self.convert(meta, depth + 1)
        elif tp in (set, frozenset):
            out = tp(self.convert_key(v) for v in obj)
        else:
            make = _VALUE_MAKERS.get(tp)
            if make is None:
                raise _corrupt(self.source, f"the pickle builds a {getattr(obj, 'name', tp.__name__)} where a value belongs")
            try:
                out = make(self, obj)
            except Refused as exc:
                raise _corrupt(self.source, str(exc)) from None
        self.done[key] = out
        return out

    def convert_key(self, key: Any) -> Any:
        if key is None or type(key) in (bool, int, float, str, bytes, complex):
            return key
        if type(key) in (tuple, frozenset, TorchDType, TorchDevice, TorchSize, NumpyScalar):
            return self.convert(key, 0)
        raise _corrupt(self.source, f"a dict key or set member is a {type(key).__name__}")

    def numpy_array(self, arr: NumpyArray) -> np.ndarray:
        self.factory.budget.charge(len(arr.raw or b""), f"a numpy array {list(arr.shape or ())}")
        return to_numpy(arr)

    @staticmethod
    def _torch():
        import torch

        return torch


# stand-in type -> how the materializer turns it into a value
_VALUE_MAKERS: dict[type, Callable[[_Materializer, Any], Any]] = {
    TensorRef: lambda m, ref: m.factory.make(ref),
    StorageRef: lambda m, ref: m.factory.make(TensorRef(ref, 0, (ref.numel,), (1,), ref.dtype)),
    TorchDType: lambda m, d: getattr(m._torch(), d.name) if m.framework == "torch" else f"torch.{d.name}",
    TorchDevice: _device_value,
    TorchSize: lambda m, s: m._torch().Size(s.dims) if m.framework == "torch" else s.dims,
    NumpyArray: lambda m, a: m.numpy_array(a),
    NumpyScalar: lambda m, a: to_numpy(a),
}


def _leaf_bytes(obj: Any) -> int:
    return len(obj) if type(obj) in (str, bytes, bytearray) else 0


def _children(obj: Any) -> list | None:
    tp = type(obj)
    if tp in (list, tuple, set, frozenset):
        return list(obj)
    if tp in (dict, collections.OrderedDict):
        out = [x for item in obj.items() for x in item]
        meta = getattr(obj, "__dict__", {}).get("_metadata")
        if meta is not None:
            out.append(meta)
        return out
    return None


# -- entry points ------------------------------------------------------------------------------

def _framework(options: ReadOptions) -> str:
    if options.framework in (None, "torch"):
        if importlib.util.find_spec("torch") is not None:
            return "torch"
        if options.framework == "torch":
            raise FrameworkNotInstalledError("converting to torch tensors needs torch: pip install 'modelsafe[torch]'")
        return "numpy"
    if options.framework == "numpy":
        return "numpy"
    raise FrameworkNotInstalledError(f"torch files convert to torch or numpy tensors, not {options.framework!r}")


def load_torch_file(path: str | os.PathLike, *, framework: str | None = None) -> Any:
    """The objects of a ``torch.save`` file, like ``torch.load(weights_only=True)`` but running no code from it.

    >>> import torch, tempfile, os
    >>> p = os.path.join(tempfile.mkdtemp(), "t.pt")
    >>> torch.save(torch.ones(2), p, _use_new_zipfile_serialization=False)
    >>> load_torch_file(p)
    tensor([1., 1.])
    """
    return read(path, ReadOptions(framework=framework)).tree


def read(path: str | os.PathLike, options: ReadOptions) -> ForeignFile:
    """Registry entry point: read a torch file into a tree of tensors and containers."""
    path = os.fspath(path)
    source = path
    framework = _framework(options)
    budget = Budget(source, regular_file_size(path), options.max_expansion)
    with open(path, "rb") as f:
        is_zip = f.read(4) == b"PK\x03\x04"
    loaded = _load_zip(path, source) if is_zip else _load_stream(path, source)
    factory = TensorFactory(framework, loaded, source, budget)
    try:
        tree = _Materializer(factory, source, framework).run(loaded.tree)
    except (CorruptCheckpointError, UnsupportedObjectError, UnsafeObjectError):
        raise
    except (RuntimeError, ValueError, TypeError) as exc:
        raise CorruptCheckpointError(f"{source}: a tensor could not be rebuilt ({exc})", path=source) from None
    notes = list(dict.fromkeys(loaded.notes))
    if loaded.big_endian:
        notes.append("big-endian storages were converted to little-endian")
    return ForeignFile(path, "torch", tree, notes)

