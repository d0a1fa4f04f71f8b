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
could pull other files' bytes into the conversion).  A dataset that declares far more
bytes than the file holds is refused before it is read.  TensorFlow is not needed.

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
import os
import re
import zipfile
from typing import Any

import numpy as np

from ..errors import CorruptCheckpointError, FrameworkNotInstalledError, ModelsafeError, UnsafeObjectError
from . import ForeignFile, ReadOptions, arrays_as

WEIGHTS_MEMBER = "model.weights.h5"  # inside a .keras archive
MIN_BOMB_BYTES = 64 << 20
MAX_RATIO = 64  # declared bytes per byte of file beyond which a dataset is called a memory bomb


def _h5py():
    try:
        import h5py
    except ImportError as exc:
        raise FrameworkNotInstalledError(
            f"reading Keras .h5 weight files needs h5py ({exc}); install it with: pip install 'modelsafe[keras]'"
        ) from exc
    return h5py


def _dataset_array(ds: Any, name: str, source: str, file_size: int, notes: list[str]) -> np.ndarray | None:
    if ds.external:
        raise UnsafeObjectError(
            f"{source}: dataset {name} stores its data in external files {[e[0] for e in ds.external]!r:.120}; refused "
            "(it would read other files from this machine)", path=source, key=name,
        )
    if ds.is_virtual:
        raise UnsafeObjectError(f"{source}: dataset {name} is a virtual dataset mapping other files; refused", path=source, key=name)
    dtype = ds.dtype
    if dtype.kind not in "biufc" or dtype.fields is not None:
        notes.append(f"{name}: {dtype} dataset is not a tensor; left out")
        return None
    nbytes = int(ds.size) * dtype.itemsize
    if nbytes > MIN_BOMB_BYTES and nbytes > MAX_RATIO * file_size:
        raise CorruptCheckpointError(
            f"{source}: dataset {name} declares {nbytes:,} bytes in a {file_size:,}-byte file; refused before reading "
            "(memory bomb or damaged file)", path=source, key=name,
        )
    arr = np.empty(ds.shape, dtype=dtype.newbyteorder("=") if dtype.byteorder == ">" else dtype)
    if arr.size:
        ds.read_direct(arr)
    if ds.attrs.get("dtype") in ("bfloat16", b"bfloat16") and arr.dtype.itemsize == 2:
        import ml_dtypes

        arr = arr.view(ml_dtypes.bfloat16)
    return arr


def _natural(name: str) -> list:
    """Sort key putting ``vars/2`` before ``vars/10`` (Keras numbers variables in order)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _open_keras_archive(h5py: Any, path: str, notes: list[str]) -> Any:
    """The model.weights.h5 inside a ``.keras`` zip, opened from memory after its size is checked."""
    archive_size = os.path.getsize(path)
    try:
        with zipfile.ZipFile(path) as z:
            info = z.getinfo(WEIGHTS_MEMBER)
            if info.file_size > MIN_BOMB_BYTES and info.file_size > MAX_RATIO * archive_size:
                raise CorruptCheckpointError(
                    f"{path}: {WEIGHTS_MEMBER} declares {info.file_size:,} bytes in a {archive_size:,}-byte archive; "
                    "refused before reading (zip bomb or damaged file)", path=path, key=WEIGHTS_MEMBER,
                )
            data = z.read(info)
            if "config.json" in z.namelist():
                notes.append("the model architecture (config.json) is not converted; only the weights are")
    except (zipfile.BadZipFile, KeyError) as exc:
        raise CorruptCheckpointError(f"{path}: not a Keras archive with {WEIGHTS_MEMBER} ({exc})", path=path) from None
    return h5py.File(io.BytesIO(data), "r"), len(data)


def _walk(h5py: Any, f: Any, path: str, file_size: int, tree: dict, notes: list[str]) -> None:
    """Every numeric dataset of ``f`` into ``tree``, depth first, names in natural order."""
    stack = [("", f)]
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
                children.append((full + "/", node))
            elif isinstance(node, h5py.Dataset):
                arr = _dataset_array(node, full, path, file_size, notes)
                if arr is not None:
                    tree[full] = arr
        stack.extend(reversed(children))


def read(path: str | os.PathLike, options: ReadOptions | None) -> ForeignFile:
    h5py = _h5py()
    path = os.fspath(path)
    file_size = os.path.getsize(path)
    tree: dict[str, Any] = {}
    notes: list[str] = []
    try:
        if zipfile.is_zipfile(path):
            f, file_size = _open_keras_archive(h5py, path, notes)
        else:
            f = h5py.File(path, "r")
    except OSError as exc:
        raise CorruptCheckpointError(f"{path}: not a readable HDF5 file ({exc})", path=path) from None
    try:
        with f:
            _walk(h5py, f, path, file_size, tree, notes)
    except ModelsafeError:
        raise
    except (OSError, KeyError, ValueError, RuntimeError, TypeError) as exc:  # h5py on a damaged file
        raise CorruptCheckpointError(f"{path}: the HDF5 file is damaged ({type(exc).__name__}: {exc})", path=path) from None
    if not tree:
        notes.append("no numeric datasets found")
    return ForeignFile(path, "keras_h5", arrays_as(tree, options.framework if options else None), notes)
