"""Convert files of other tools into modelsafe files (or plain safetensors), never running their code.

>>> import numpy as np, tempfile, os
>>> d = tempfile.mkdtemp()
>>> np.savez(os.path.join(d, "w.npz"), w=np.ones(3, np.float32))
>>> convert(os.path.join(d, "w.npz"), os.path.join(d, "w.safetensors")).tensors
1
"""

from __future__ import annotations

import collections
import errno
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from .adapters import adapter_for_type, format_tag, frameworks_for_type, known_frameworks
from .errors import InvalidArgumentError, StorageError, UnsupportedObjectError
from .format.dtypes import BY_NAME
from .format.plan import FlatState, Payload
from .format.writer import write_plain_file
from .legacy import MAX_EXPANSION, read_foreign
from .progress import progress_bar
from .storage.local import atomic_file
from .tree import Flattener, format_path, tensor_payload

__all__ = ["convert", "ConvertSummary", "register_lowering", "TARGETS"]

TARGETS = ("modelsafe", "safetensors")


@dataclass
class ConvertSummary:
    """What :func:`convert` did; ``to_dict()`` for JSON output."""

    source: str
    destination: str
    source_format: str
    target: str
    tensors: int
    tensor_bytes: int
    file_bytes: int
    seconds: float
    notes: list[str] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # values plain safetensors could not hold (dotted names)

    def to_dict(self) -> dict:
        return asdict(self)


# -- values modelsafe cannot store, lowered to ones it can --------------------------------------

_LOWERINGS: list[tuple[Callable[[Any], bool], Callable[[Any], Any], str]] = []


def register_lowering(matches: Callable[[Any], bool], lower: Callable[[Any], Any], description: str) -> None:
    """Teach convert how to store a value ``ms.save`` cannot: ``lower(value)`` returns a storable one.

    Lowerings apply only when ``ms.save`` itself refuses the value.

    >>> register_lowering(lambda v: isinstance(v, range), lambda r: [r.start, r.stop, r.step], "range as [start, stop, step]")
    """
    _LOWERINGS.append((matches, lower, description))


register_lowering(lambda v: type(v) is slice, lambda s: {"slice": [s.start, s.stop, s.step]}, 'slice stored as {"slice": [start, stop, step]}')
register_lowering(lambda v: type(v) is complex, lambda c: {"complex": [c.real, c.imag]}, 'complex stored as {"complex": [real, imag]}')

_PLAIN = (type(None), bool, int, float, str, bytes, bytearray)


def _lowerings_for(tp: type) -> list[tuple[Callable[[Any], bool], Callable[[Any], Any], str]]:
    """The lowerings of the frameworks ``tp`` belongs to (torch.Size -> torch's), then the registered ones."""
    own = [(lw.matches, lw.lower, lw.description) for fw in frameworks_for_type(tp) for lw in fw.lowerings]
    return own + _LOWERINGS


def _storable(value: Any) -> bool:
    try:
        Flattener().encode(value, ())
    except UnsupportedObjectError:
        return False
    return True


def lower_tree(obj: Any, notes: list[str]) -> Any:
    """A copy of ``obj`` in which every value ms.save would refuse is lowered (containers are rebuilt)."""
    seen: dict[int, Any] = {}

    def walk(value: Any, path: tuple) -> Any:
        tp = type(value)
        if tp in _PLAIN or adapter_for_type(tp) is not None:
            return value
        if id(value) in seen:
            return seen[id(value)]
        if tp in (dict, collections.OrderedDict):
            out = tp()
            for k, v in value.items():
                out[k] = walk(v, path + (k,))
            meta = getattr(value, "_metadata", None)
            if meta is not None:
                out._metadata = meta
        elif tp in (list, tuple):
            out = tp(walk(v, path + (i,)) for i, v in enumerate(value))
        elif tp in (set, frozenset) or _storable(value):
            out = value
        else:
            for matches, lower, description in _lowerings_for(tp):
                if matches(value):
                    out = lower(value)
                    notes.append(f"{format_path(path)}: {description}")
                    break
            else:
                out = value  # ms.save reports it, naming the path
        seen[id(value)] = out
        return out

    return walk(obj, ())


# -- plain safetensors -------------------------------------------------------------------------

def _tie_key(value: Any) -> Any:
    """What makes two tensors one in the file: the same memory, dtype, shape and strides (tied weights)."""
    info = adapter_for_type(type(value)).describe(value)
    return ("identity", info.identity) if info.identity is not None else ("object", id(value))


def _flat_tensors(obj: Any, notes: list[str], dropped: list[str], tied: dict[str, str]) -> dict[str, Any]:
    """name -> tensor with dotted names (``model.0.weight``), as state_dict keys are spelled.

    A tensor reached under several names (tied weights) is kept under the first; ``tied``
    receives each other name -> the kept one, as ``safetensors.torch.save_model`` records them.
    """
    out: dict[str, Any] = {}
    kept: dict[Any, str] = {}

    def walk(value: Any, prefix: str) -> None:
        if adapter_for_type(type(value)) is not None:
            name = prefix or "tensor"
            if name in out or name in tied:  # {"a.b": x, "a": {"b": y}} spell the same dotted name
                n = 2
                while f"{name}#{n}" in out or f"{name}#{n}" in tied:
                    n += 1
                notes.append(f"two tensors are named {name!r}; the second is stored as {name}#{n}")
                name = f"{name}#{n}"
            key = _tie_key(value)
            if key in kept:
                tied[name] = kept[key]
                return
            kept[key] = name
            out[name] = value
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(v, f"{prefix}.{i}" if prefix else str(i))
        else:
            dropped.append(prefix or "(root)")

    walk(obj, "")
    if dropped:
        notes.append(f"plain safetensors holds tensors only; {len(dropped)} other values were left out: {_some(dropped)}")
    if tied:
        notes.append(f"{len(tied)} names are tied to a tensor stored under another name (plain safetensors cannot "
                     f"share storage); each is stored once and the file's metadata maps the other name to it, as "
                     f"safetensors.torch.save_model does (load with safetensors.torch.load_model): {_some(list(tied))}")
    return out


def _some(names: list[str]) -> str:
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def _payloads(tensors: dict[str, Any], notes: list[str]) -> list[Payload]:
    """The payload records of ``tensors`` (name -> tensor), noting dtypes safetensors has no code for."""
    payloads = []
    for name, value in tensors.items():
        adapter = adapter_for_type(type(value))
        payload = tensor_payload(name, value, adapter, adapter.describe(value), name)
        if BY_NAME[payload.dtype].stored_as_bytes:
            notes.append(f"{name}: safetensors has no {payload.dtype}; stored as raw bytes (U8)")
        payloads.append(payload)
    return payloads


# -- the entry point ---------------------------------------------------------------------------

def _count_tensors(path: str) -> tuple[int, int]:
    """(tensors, tensor bytes) stored in the written file, from its header (tied tensors count once)."""
    from .format.reader import FileSource

    with FileSource(path) as source:
        tensors = [r for r in source.records.values() if r.kind == "tensor"]
        return len(tensors), sum(r.nbytes for r in tensors)


def convert(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    *,
    to: str = "modelsafe",
    framework: str | None = None,
    metadata: dict | None = None,
    overwrite: bool = False,
    max_expansion: float = MAX_EXPANSION,
    progress: bool = False,
) -> ConvertSummary:
    """Read ``src`` (torch .pt/.pth/.bin, .safetensors or a sharded *.index.json, .npz, Keras
    .weights.h5, MXNet .params) without executing anything from it, and write ``dst``.

    ``to="modelsafe"`` writes a modelsafe file (the whole tree: nested dicts, optimizer
    state, epoch numbers...); ``to="safetensors"`` writes a plain safetensors file for other
    tools (tensors only, dotted names, no modelsafe manifest).  ``framework`` (a name
    ``ms.load`` takes: "torch", "numpy", ...) picks the tensor type recorded in the file.  The write is atomic.

    Tensors that are one (tied weights, a tensor saved under several names) are stored
    once.  The tensor bytes written may be at most ``max_expansion`` times the size of
    ``src`` on disk, plus 64 MiB, checked before anything is allocated: a decompression
    bomb, never-written HDF5 datasets or overlapping views of one storage are refused with
    an error naming the member and the numbers.  Raise it for a file you trust that
    compresses better than that (``float("inf")`` turns the check off).
    ``progress=True`` shows a progress bar (bytes, rate) on stderr while ``dst`` is written.

    >>> import numpy as np, tempfile, os, modelsafe as ms
    >>> d = tempfile.mkdtemp()
    >>> np.savez(os.path.join(d, "a.npz"), w=np.arange(4))
    >>> s = convert(os.path.join(d, "a.npz"), os.path.join(d, "a.safetensors"))
    >>> (s.source_format, s.tensors, ms.load(os.path.join(d, "a.safetensors"))["w"])
    ('npz', 1, array([0, 1, 2, 3]))
    """
    if to not in TARGETS:
        raise InvalidArgumentError(f"convert: to={to!r}: choose one of {', '.join(TARGETS)}")
    if framework is not None and framework not in known_frameworks():
        raise InvalidArgumentError(
            f"convert: framework must be one of {', '.join(known_frameworks())} or None, not {framework!r}"
        )
    src, dst = os.fspath(src), os.fspath(dst)
    if os.path.exists(dst):
        if os.path.exists(src) and os.path.samefile(src, dst):
            raise StorageError(f"{dst}: is the source file; write the conversion to another path", path=dst, errno=errno.EEXIST)
        if not overwrite:
            raise StorageError(f"{dst}: already exists; choose another path or pass overwrite=True",
                               path=dst, errno=errno.EEXIST)
    folder = os.path.dirname(os.path.abspath(dst))
    if not os.path.isdir(folder):
        raise StorageError(f"{dst}: the directory {folder} does not exist; create it first", path=dst, errno=errno.ENOENT)
    started = time.perf_counter()
    found = read_foreign(src, framework=framework, max_expansion=max_expansion)
    notes = list(found.notes)
    left_out: list[str] = []
    if to == "modelsafe":
        tree = lower_tree(found.tree, notes)
        from .api import save

        meta = {"converted_from": os.path.basename(src), "source_format": found.format}
        meta.update(metadata or {})
        save(tree, dst, metadata=meta, progress=progress)
        count, nbytes = _count_tensors(dst)
    else:
        tied: dict[str, str] = {}
        tensors = _flat_tensors(found.tree, notes, left_out, tied)
        left_out.extend(tied)
        state = FlatState.of_payloads(_payloads(tensors, notes), tied)
        frameworks = {p.framework for p in state.payloads}
        tag = format_tag(frameworks.pop()) if len(frameworks) == 1 else None
        with progress_bar(progress, f"writing {os.path.basename(dst)}", state.nbytes) as on_bytes, atomic_file(dst) as f:
            write_plain_file(f, state, user_metadata={"format": tag} if tag else None, on_bytes=on_bytes)
        count, nbytes = len(state.payloads), state.nbytes
    return ConvertSummary(
        source=src, destination=dst, source_format=found.format, target=to, tensors=count, tensor_bytes=nbytes,
        file_bytes=os.path.getsize(dst), seconds=round(time.perf_counter() - started, 6), notes=notes,
        left_out=left_out,
    )

