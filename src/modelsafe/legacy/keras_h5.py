"""Keras weight files in HDF5: Keras 3 ``.weights.h5`` and ``.keras`` archives, Keras 2 ``.h5``, via h5py.

Keras 3 writes one group per saveable object along its attribute path, each with a
``vars`` group whose datasets ``"0"``, ``"1"``, ... are that object's variables in order::

    /layers/dense/vars/0      kernel
    /layers/dense/vars/1      bias
    /optimizer/vars/0         iterations
    /vars                     (the model's own variables; often empty)

A ``.keras`` archive is a zip holding ``model.weights.h5`` (read from memory, its size
checked first) beside the architecture (``config.json``, not converted).
The reader keeps that layout as a flat dict keyed by dataset path
(``"layers/dense/vars/0"``), so nothing is renamed and Keras 2 files (``dense/dense/kernel:0``)
read the same way.  HDF5 features that reach outside the file are refused: external
links are skipped, datasets with external or virtual storage raise an error (they
could pull other files' bytes into the conversion), and so are filters HDF5 would load
as plugin libraries.  Every dataset is charged against the file's real size on disk (a
:class:`~modelsafe.legacy.Budget`) before it is read: never-written datasets (fill values,
no storage) and compressed chunks cannot inflate a small file into gigabytes.  TensorFlow
is not needed.

>>> import h5py, numpy as np, tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "m.weights.h5")
>>> with h5py.File(p, "w") as f:
...     _ = f.create_group("layers/dense/vars").create_dataset("0", data=np.ones((2, 2), np.float32))
>>> read(p, None).tree
{'layers/dense/vars/0': array([[1., 1.],
       [1., 1.]], dtype=float32)}
"""

from __future__ import annotations

import io
import math
import os
import re
import zipfile
import zlib
from typing import Any

import numpy as np

from ..errors import CorruptCheckpointError, FrameworkNotInstalledError, ModelsafeError, UnsafeObjectError, UnsupportedObjectError
from ..format import dtypes
from . import Budget, ForeignFile, ReadOptions, arrays_as, checked_shape, regular_file_size

WEIGHTS_MEMBER = "model.weights.h5"  # inside a .keras archive
# HDF5's own filters (and h5py's lzf); any other id makes HDF5 load a plugin library from disk
BUILTIN_FILTERS = {1: "gzip", 2: "shuffle", 3: "fletcher32", 4: "szip", 5: "nbit", 6: "scaleoffset", 32000: "lzf"}
MAX_DTYPE_ATTR_BYTES = 64


def _h5py():
    try:
        import h5py
    except ImportError as exc:
        raise FrameworkNotInstalledError(
            f"reading Keras .h5 weight files needs h5py ({exc}); install it with: pip install 'modelsafe[keras]'"
        ) from exc
    return h5py


def _refuse_outside_storage(ds: Any, name: str, source: str) -> None:
    """External files, virtual datasets and plugin filters reach outside the file (other files, shared libraries)."""
    if ds.external:
        raise UnsafeObjectError(
            f"{source}: dataset {name} stores its data in external files {[e[0] for e in ds.external]!r:.120}; refused "
            "(it would read other files from this machine)", path=source, key=name,
        )
    if ds.is_virtual:
        raise UnsafeObjectError(f"{source}: dataset {name} is a virtual dataset mapping other files; refused", path=source, key=name)
    plist = ds.id.get_create_plist()
    for i in range(plist.get_nfilters()):
        code = plist.get_filter(i)[0]
        if code not in BUILTIN_FILTERS:
            raise UnsupportedObjectError(
                f"{source}: dataset {name} is compressed with HDF5 filter {code}, a plugin; modelsafe reads only "
                f"HDF5's own filters ({', '.join(sorted(BUILTIN_FILTERS.values()))}) and never loads plugin "
                "libraries a file names. Rewrite the file without that filter", path=source, key=name,
            )


def _read_cost(ds: Any, shape: tuple, itemsize: int, name: str, source: str) -> int:
    """Bytes reading ``ds`` allocates: the array, or one chunk when a chunk is larger (chunks are inflated whole)."""
    nbytes = math.prod(shape) * itemsize
    if ds.chunks is None:
        return nbytes
    chunk = checked_shape(tuple(ds.chunks), itemsize, source, f"dataset {name} (its chunk)")
    return max(nbytes, math.prod(chunk) * itemsize)


def _is_bfloat16(h5py: Any, ds: Any) -> bool:
    """Keras marks bfloat16 variables (stored as 2-byte ints) with a small ``dtype`` attribute; read only if small."""
    if "dtype" not in ds.attrs:
        return False
    attr = h5py.h5a.open(ds.id, b"dtype")
    if attr.get_storage_size() > MAX_DTYPE_ATTR_BYTES:
        return False
    return ds.attrs.get("dtype") in ("bfloat16", b"bfloat16")


def _dataset_array(h5py: Any, ds: Any, name: str, source: str, budget: Budget, notes: list[str]) -> np.ndarray | None:
    _refuse_outside_storage(ds, name, source)
    dtype = ds.dtype
    native = dtype.newbyteorder("=") if dtype.byteorder == ">" else dtype
    if dtype.kind not in "biufc" or dtype.fields is not None or dtypes.from_numpy(native) is None or ds.shape is None:
        notes.append(f"{name}: {dtype} dataset is not a tensor; left out")
        return None
    shape = checked_shape(ds.shape, dtype.itemsize, source, f"dataset {name}")
    budget.charge(_read_cost(ds, shape, dtype.itemsize, name, source), f"dataset {name}")
    arr = np.empty(shape, dtype=native)
    if arr.size:
        ds.read_direct(arr)
    if arr.dtype.itemsize == 2 and _is_bfloat16(h5py, ds):
        import ml_dtypes

        arr = arr.view(ml_dtypes.bfloat16)
    return arr


def _natural(name: str) -> list:
    """Sort key putting ``vars/2`` before ``vars/10`` (Keras numbers variables in order)."""
    # odd parts are the digit runs; "²".isdigit() is True but int("²") fails, so go by position
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name))]


def _open_keras_archive(h5py: Any, path: str, budget: Budget, notes: list[str]) -> Any:
    """The model.weights.h5 inside a ``.keras`` zip, opened from memory once its size is charged to ``budget``."""
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(WEIGHTS_MEMBER)
            budget.charge(info.file_size, WEIGHTS_MEMBER)  # zipfile never inflates past the declared size
            data = z.read(info)
            if "config.json" in z.namelist():
                notes.append("the model architecture (config.json) is not converted; only the weights are")
    except (zipfile.BadZipFile, KeyError, zlib.error, EOFError, NotImplementedError) as exc:
        raise CorruptCheckpointError(f"{path}: not a Keras archive with {WEIGHTS_MEMBER} ({exc})", path=path) from None
    return h5py.File(io.BytesIO(data), "r")


def _walk(h5py: Any, f: Any, path: str, budget: Budget, tree: dict, notes: list[str]) -> None:
    """Every numeric dataset of ``f`` into ``tree``, depth first, names in natural order.

    Groups reached twice through hard links (a group may even link to itself) are walked
    once; a dataset reached under several names is read once and shared.
    """
    stack = [("", f)]
    seen_groups = {f.id}
    arrays: dict[Any, Any] = {}
    while stack:
        prefix, group = stack.pop()
        children = []
        for name in sorted(group, key=_natural):
            link = group.get(name, getlink=True)
            full = f"{prefix}{name}"
            if isinstance(link, h5py.ExternalLink):
                notes.append(f"{full}: external link to {link.filename}:{link.path} left out")
                continue
            if isinstance(link, h5py.SoftLink):
                notes.append(f"{full}: soft link to {link.path} left out (the target is read under its own name)")
                continue
            node = group[name]
            if isinstance(node, h5py.Group):
                if node.id in seen_groups:
                    notes.append(f"{full}: a second link to a group already read; left out")
                    continue
                seen_groups.add(node.id)
                children.append((full + "/", node))
            elif isinstance(node, h5py.Dataset):
                if node.id not in arrays:
                    arrays[node.id] = _dataset_array(h5py, node, full, path, budget, notes)
                if arrays[node.id] is not None:
                    tree[full] = arrays[node.id]
        stack.extend(reversed(children))


def read(path: str | os.PathLike, options: ReadOptions | None) -> ForeignFile:
    h5py = _h5py()
    path = os.fspath(path)
    options = options or ReadOptions()
    budget = Budget(path, regular_file_size(path), options.max_expansion)  # the archive on disk, not its member
    tree: dict[str, Any] = {}
    notes: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            f = _open_keras_archive(h5py, path, budget, notes)
        else:
            f = h5py.File(path, "r")
    except OSError as exc:
        raise CorruptCheckpointError(f"{path}: not a readable HDF5 file ({exc})", path=path) from None
    try:
        with f:
            _walk(h5py, f, path, budget, tree, notes)
    except ModelsafeError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:  # h5py on a damaged file
        raise CorruptCheckpointError(f"{path}: the HDF5 file is damaged ({type(exc).__name__}: {exc})", path=path) from None
    if not tree:
        notes.append("no numeric datasets found")
    return ForeignFile(path, "keras_h5", arrays_as(tree, options.framework), notes)
