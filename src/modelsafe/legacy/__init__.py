"""Safe readers for files written by other tools: torch pickles, safetensors, npz, Keras h5, MXNet.

Nothing here executes code from a file.  Each source format is one module with a
``read(path, options) -> ForeignFile`` function; this package keeps a small
registry that maps file signatures (first bytes) and extensions to those modules,
imported lazily so ``import modelsafe`` stays light.

>>> import numpy as np, tempfile, os
>>> from modelsafe.legacy import read_foreign
>>> p = os.path.join(tempfile.mkdtemp(), "a.npz")
>>> np.savez(p, w=np.arange(3))
>>> read_foreign(p).tree["w"]
array([0, 1, 2])
"""

from __future__ import annotations

import importlib
import math
import os
import stat
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import CheckpointNotFoundError, CorruptCheckpointError, InvalidArgumentError, StorageError

__all__ = ["ForeignFile", "ReadOptions", "register_reader", "reader_for", "read_foreign", "known_formats",
           "weights_in_directory", "arrays_as", "Budget", "checked_shape", "regular_file_size",
           "MAX_EXPANSION", "EXPANSION_ALLOWANCE"]

HEAD_BYTES = 64

# The rule every reader follows (docs/convert.md): the tensors (and bytes) a read produces may
# hold at most MAX_EXPANSION times the bytes the input file really holds on disk, plus
# EXPANSION_ALLOWANCE.  Real files stay far below: raw formats (torch, MXNet, safetensors,
# uncompressed h5) hold their tensors byte for byte, tied weights are stored once, and
# compressed npz / h5 / .keras weights rarely shrink below half.  A deflate bomb, never-written
# h5 datasets or thousands of overlapping views of one storage hit the limit before anything
# is allocated.
MAX_EXPANSION = 8.0
EXPANSION_ALLOWANCE = 64 << 20   # zero-filled or broadcast tensors a small file may still hold
MAX_TENSOR_BYTES = 1 << 48       # dims and strides beyond this are damage, whatever the file holds
MAX_DIMS = 64


@dataclass
class ReadOptions:
    """How a reader builds tensors.  ``framework`` None: torch for torch files when torch is installed, else numpy.

    ``max_expansion``: output bytes allowed per byte of input (see :class:`Budget`).
    """

    framework: str | None = None
    max_expansion: float = MAX_EXPANSION


@dataclass
class ForeignFile:
    """What a reader found: the object tree (tensors, containers, scalars) and notes for the user."""

    path: str
    format: str                      # registry name of the reader ("torch", "safetensors", ...)
    tree: Any
    notes: list[str] = field(default_factory=list)


class Budget:
    """The bytes one read may produce from a file holding ``held`` bytes on disk.

    Readers charge every tensor (and every bytes value) *before* allocating or reading it,
    so a small file cannot make the conversion allocate or write gigabytes.

    >>> b = Budget("tiny.npz", held=1000, max_expansion=8)
    >>> b.charge(4096, "w")
    >>> b.limit == 8000 + EXPANSION_ALLOWANCE
    True
    """

    def __init__(self, source: str, held: int, max_expansion: float = MAX_EXPANSION) -> None:
        self.source = source
        self.held = held
        self.max_expansion = max_expansion
        self.limit = math.inf if math.isinf(max_expansion) else int(held * max_expansion) + EXPANSION_ALLOWANCE
        self.spent = 0

    def charge(self, nbytes: int, key: str) -> None:
        """Count ``nbytes`` more bytes made for ``key``; refuse once the total passes the limit."""
        self.spent += nbytes
        if self.spent > self.limit:
            raise CorruptCheckpointError(
                f"{self.source}: {key} brings the tensors this file would produce to {self.spent:,} bytes, but the "
                f"file holds {self.held:,} bytes (limit: {self.max_expansion:g} x that + {EXPANSION_ALLOWANCE >> 20} "
                "MiB); refused before allocating, as a decompression bomb, unwritten datasets or shared views "
                "multiplied. If you trust the file, raise the limit: convert(..., max_expansion=N) or "
                "modelsafe convert --max-expansion N",
                path=self.source, key=key,
            )


def checked_shape(shape: Any, itemsize: int, source: str, key: str) -> tuple[int, ...]:
    """``shape`` as a tuple of ints, refused unless every dim is a non-negative int and the tensor
    (counting empty dims as 1, as numpy and torch do) stays under MAX_TENSOR_BYTES.

    >>> checked_shape((0, 3), 4, "f", "w")
    (0, 3)
    """
    ok = isinstance(shape, (tuple, list)) and len(shape) <= MAX_DIMS and all(type(d) is int and d >= 0 for d in shape)
    if ok and math.prod(max(d, 1) for d in shape) * max(itemsize, 1) <= MAX_TENSOR_BYTES:
        return tuple(shape)
    raise CorruptCheckpointError(
        f"{source}: {key} has shape {shape!r:.120}, which no real tensor has (negative, non-integer, more than "
        f"{MAX_DIMS} dims, or over {MAX_TENSOR_BYTES:,} bytes even with its empty dims counted as 1); "
        "the file is damaged or hostile", path=source, key=key,
    )


def regular_file_size(path: str) -> int:
    """The size of ``path``, refused unless it is a regular file (a FIFO would hang, a device never end)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{path}: no such file; check the path", path=path) from None
    except OSError as exc:
        raise StorageError(f"{path}: cannot read ({exc.strerror})", path=path, errno=exc.errno) from exc
    if not stat.S_ISREG(st.st_mode):
        raise StorageError(f"{path}: is not a regular file (a pipe, device or socket); convert a file", path=path)
    return st.st_size


@dataclass(frozen=True)
class ReaderEntry:
    name: str
    module: str                                  # module with read(path, options) -> ForeignFile
    extensions: tuple[str, ...]                  # lower-case suffixes, longest match wins
    sniff: Callable[[bytes, str], bool] | None   # (first bytes, path) -> True if the file is this format
    description: str


_READERS: list[ReaderEntry] = []


def register_reader(
    name: str,
    module: str,
    *,
    extensions: tuple[str, ...] = (),
    sniff: Callable[[bytes, str], bool] | None = None,
    description: str = "",
) -> None:
    """Register a reader module for a foreign format; signatures are tried before extensions.

    ``module`` is imported only when a file of that format is read; it provides
    ``read(path, options) -> ForeignFile``.

    >>> register_reader("myformat", "mypackage.myformat_reader", extensions=(".myformat",),
    ...                 description="weights written by my tool")
    >>> "myformat" in [name for name, _, _ in known_formats()]
    True
    """
    _READERS[:] = [r for r in _READERS if r.name != name]
    _READERS.append(ReaderEntry(name, module, tuple(e.lower() for e in extensions), sniff, description))


def known_formats() -> list[tuple[str, str, tuple[str, ...]]]:
    """(name, description, extensions) of every registered reader."""
    return [(r.name, r.description, r.extensions) for r in _READERS]


def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(HEAD_BYTES)
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"{path}: no such file; check the path", path=path) from None
    except OSError as exc:
        raise StorageError(f"{path}: cannot read ({exc.strerror})", path=path, errno=exc.errno) from exc


def reader_for(path: str | os.PathLike) -> ReaderEntry:
    """The reader for ``path``: by signature first, then by the longest matching extension."""
    path = os.fspath(path)
    head = _head(path)
    for entry in _READERS:
        if entry.sniff is not None and entry.sniff(head, path):
            return entry
    lower = path.lower()
    matches = [(len(ext), entry) for entry in _READERS for ext in entry.extensions if lower.endswith(ext)]
    if matches:
        return max(matches, key=lambda m: m[0])[1]
    known = ", ".join(sorted({ext for r in _READERS for ext in r.extensions}))
    raise CorruptCheckpointError(
        f"{path}: not a format modelsafe can convert (its first bytes match no known signature and its "
        f"extension none of {known})",
        path=path,
    )


def weights_in_directory(folder: str) -> str:
    """The one weights file of a model folder (a Hugging Face style directory): its ``*.index.json``
    when sharded (safetensors preferred), else its single file with a known extension."""
    names = sorted(os.listdir(folder))
    indexes = [n for n in names if n.lower().endswith(".index.json")]
    if indexes:
        preferred = [n for n in indexes if "safetensors" in n.lower()] or indexes
        return os.path.join(folder, preferred[0])
    known = {ext for r in _READERS for ext in r.extensions if ext != ".index.json"}
    files = [n for n in names if os.path.isfile(os.path.join(folder, n)) and any(n.lower().endswith(e) for e in known)]
    safetensors = [n for n in files if n.lower().endswith(".safetensors")]
    chosen = safetensors if len(safetensors) == 1 else files
    if len(chosen) == 1:
        return os.path.join(folder, chosen[0])
    raise CorruptCheckpointError(
        f"{folder}: is a directory with {'no' if not chosen else len(chosen)} weight files "
        f"({', '.join(chosen[:6]) or 'none of ' + ', '.join(sorted(known))}); name the file to convert",
        path=folder,
    )


def read_foreign(path: str | os.PathLike, *, framework: str | None = None,
                 max_expansion: float = MAX_EXPANSION) -> ForeignFile:
    """Read ``path`` with the reader its signature or extension selects; never runs code from the file.

    A directory is read through its one weights file (see :func:`weights_in_directory`).
    ``max_expansion`` bounds what the read may produce (see :class:`Budget`).
    """
    path = os.fspath(path)
    if isinstance(max_expansion, bool) or not isinstance(max_expansion, (int, float)) or not max_expansion >= 0:
        raise InvalidArgumentError(f"max_expansion={max_expansion!r}: give a number >= 0 (output bytes per input byte)")
    if os.path.isdir(path):
        path = weights_in_directory(path)
    regular_file_size(path)
    entry = reader_for(path)
    module = importlib.import_module(entry.module)
    return module.read(path, ReadOptions(framework=framework, max_expansion=max_expansion))


def arrays_as(tree: Any, framework: str | None) -> Any:
    """``tree`` (a dict or list of numpy arrays) with every array converted to ``framework``'s tensors.

    None and "numpy" keep numpy arrays; "torch" gives torch tensors of the same dtype (bfloat16 included).
    """
    if framework in (None, "numpy"):
        return tree
    if framework != "torch":
        from ..errors import FrameworkNotInstalledError

        raise FrameworkNotInstalledError(f"this format converts to numpy or torch tensors, not {framework!r}")
    import numpy as np

    from ..adapters import adapter_named
    from ..adapters.torch.tensors import torch_dtype
    from ..format import dtypes

    adapter_named("torch")  # raises FrameworkNotInstalledError with an install hint
    import torch

    made: dict[int, Any] = {}  # an array reached under several names (h5 hard links) stays one tensor

    def convert(value: Any) -> Any:
        if not isinstance(value, np.ndarray):
            return value
        if id(value) not in made:
            dt = dtypes.from_numpy(value.dtype)
            flat = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
            made[id(value)] = torch.from_numpy(flat.copy()).view(torch_dtype(dt.name)).reshape(value.shape)
        return made[id(value)]

    if isinstance(tree, dict):
        return {k: convert(v) for k, v in tree.items()}
    return [convert(v) for v in tree]


# -- signatures -------------------------------------------------------------------

def _is_zip(head: bytes) -> bool:
    return head[:4] == b"PK\x03\x04"


def _zip_names(path: str) -> list[str]:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError):
        return []
    except Exception:  # struct.error and the like from a damaged directory: not a zip we can read
        return []


def _sniff_torch(head: bytes, path: str) -> bool:
    from .torch_pickle import LEGACY_MAGIC_PICKLE

    if head.startswith(LEGACY_MAGIC_PICKLE):
        return True
    if _is_zip(head):
        return any(name.endswith("data.pkl") or name.endswith("constants.pkl") for name in _zip_names(path))
    return False


def _sniff_npz(head: bytes, path: str) -> bool:
    if not _is_zip(head):
        return False
    names = _zip_names(path)
    return bool(names) and all(name.endswith(".npy") for name in names)


def _sniff_safetensors(head: bytes, path: str) -> bool:
    if len(head) < 10:
        return False
    n = int.from_bytes(head[:8], "little")
    return 2 <= n < 100_000_000 and head[8:9] == b"{"


def _sniff_hdf5(head: bytes, path: str) -> bool:
    if _is_zip(head):  # a Keras 3 .keras archive
        return "model.weights.h5" in _zip_names(path)
    return head.startswith(b"\x89HDF\r\n\x1a\n")


def _sniff_mxnet(head: bytes, path: str) -> bool:
    from .mxnet_params import LIST_MAGIC

    return len(head) >= 16 and int.from_bytes(head[:8], "little") == LIST_MAGIC and head[8:16] == b"\0" * 8


def _sniff_index(head: bytes, path: str) -> bool:
    return path.lower().endswith(".index.json")


register_reader("sharded", "modelsafe.legacy.safetensors", extensions=(".index.json",), sniff=_sniff_index,
                description="sharded checkpoints: a *.index.json weight_map over safetensors or torch shards")
register_reader("safetensors", "modelsafe.legacy.safetensors", extensions=(".safetensors",), sniff=_sniff_safetensors,
                description="safetensors files (modelsafe files too)")
register_reader("npz", "modelsafe.legacy.npz", extensions=(".npz",), sniff=_sniff_npz,
                description="numpy .npz archives (allow_pickle=False)")
register_reader("torch", "modelsafe.legacy.torch_pickle", extensions=(".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle"),
                sniff=_sniff_torch, description="torch.save files, zip and legacy formats (allowlist unpickler)")
register_reader("keras_h5", "modelsafe.legacy.keras_h5", extensions=(".weights.h5", ".h5", ".hdf5", ".keras"),
                sniff=_sniff_hdf5, description="Keras .weights.h5 / .keras / .h5 weight files (h5py)")
register_reader("mxnet", "modelsafe.legacy.mxnet_params", extensions=(".params", ".nd"), sniff=_sniff_mxnet,
                description="MXNet .params / NDArray list files, read without MXNet")
