"""The public verbs: save, load, open."""

from __future__ import annotations

import os
from typing import Any, Iterable

from .adapters import known_frameworks
from .arguments import check_flag, check_metadata, check_names, check_path, check_storage_options
from .errors import InvalidArgumentError, UnsupportedObjectError
from .format.writer import hash_payloads, write_file, write_hashed
from .gc_pause import gc_paused
from .loading import add_aliases, decode_tree, materialize, refuse_pickles
from .progress import progress_bar
from .reader import Reader
from .sources import open_source
from .storage import is_url, local_path
from .storage.local import atomic_file
from .tree import Flattener, flatten

PathLike = str | os.PathLike


def encode_metadata(metadata: Any) -> Any:
    """User metadata as a skeleton node (JSON values only: no tensors, bytes or pickles)."""
    if metadata is None:
        return None
    fl = Flattener(allow_pickle=False)
    try:
        node = fl.flatten(metadata)
    except UnsupportedObjectError as exc:
        raise UnsupportedObjectError(f"metadata: {exc.message}", key=exc.key) from None
    if fl.payloads:
        first = fl.payloads[0]
        raise UnsupportedObjectError(
            f"metadata holds {first.path.replace('obj', 'metadata', 1)} ({first.kind}); metadata takes "
            "JSON values only (dict, list, str, numbers, bool, None): put tensors and bytes in the saved object",
            key=first.path,
        )
    return node


def save(
    obj: Any,
    path: PathLike,
    *,
    metadata: dict | None = None,
    allow_pickle: bool = False,
    storage_options: dict | None = None,
    progress: bool = False,
) -> None:
    """Save a tree of tensors, containers and JSON scalars to one safetensors-compatible file.

    The write is atomic and durable: ``path`` holds either the old file or the new one.
    ``progress=True`` shows a progress bar (bytes, rate) on stderr while the tensors are written.

    >>> import numpy as np, tempfile, os, modelsafe as ms
    >>> p = os.path.join(tempfile.mkdtemp(), "state.safetensors")
    >>> ms.save({"w": np.ones(3, np.float32), "epoch": 5}, p, metadata={"note": "demo"})
    >>> ms.load(p)["epoch"]
    5
    """
    check_path(path, call="ms.save(obj, path)", hint=_swapped_hint(obj, "ms.save(obj, path) takes the object first"))
    check_metadata(metadata)
    check_flag(allow_pickle, call="ms.save", name="allow_pickle")
    check_flag(progress, call="ms.save", name="progress")
    check_storage_options(storage_options, path, call="ms.save")
    path = os.fspath(path) if is_url(path) else local_path(path)
    with gc_paused():
        fl = flatten(obj, allow_pickle=allow_pickle)
        metadata_node = encode_metadata(metadata)
        if is_url(path):
            _save_remote(path, fl, metadata_node, metadata, storage_options)
            return
        with progress_bar(progress, f"saving {os.path.basename(path)}", fl.nbytes) as on_bytes, atomic_file(path) as f:
            write_file(f, fl, metadata_node=metadata_node, user_metadata=metadata, on_bytes=on_bytes)


def _save_remote(url: str, fl: Any, metadata_node: Any, metadata: Any, storage_options: dict | None) -> None:
    """Stream the file to an object store: hashed first, so the header goes out final and first."""
    from .storage.remote import write_object

    hashed = hash_payloads(fl, metadata_node=metadata_node, user_metadata=metadata)
    write_object(url, lambda f: write_hashed(f, hashed), storage_options)


def load(
    path: PathLike,
    *,
    map_location: Any = None,
    framework: str | None = None,
    trusted: Iterable[str] = (),
    allow_pickle: bool = False,
    verify: bool = True,
    storage_options: dict | None = None,
    mmap: bool = True,
    progress: bool = False,
) -> Any:
    """Load what :func:`save` wrote (or any safetensors file), checksums verified.

    ``framework`` ("numpy", "torch", ...) converts every tensor; by default each comes
    back as the framework it was saved from.  ``map_location`` works as in ``torch.load``.
    Tensors view a private copy-on-write mapping of the file (like safetensors and
    ``torch.load(mmap=True)``): writes to them never reach the file, and modelsafe's own
    saves replace files by rename, so loaded tensors never change.  Pass ``mmap=False``
    to read into private memory when another program may rewrite the file in place
    while the tensors are alive (truncating a mapped file makes reads of it fail).
    ``progress=True`` shows a progress bar (bytes, rate) on stderr while tensors are read and verified.

    >>> import numpy as np, tempfile, os, modelsafe as ms
    >>> p = os.path.join(tempfile.mkdtemp(), "t.safetensors")
    >>> ms.save([np.arange(3), (1, 2.5)], p)
    >>> ms.load(p)
    [array([0, 1, 2]), (1, 2.5)]
    """
    _check_read_arguments(path, storage_options, call="ms.load", framework=framework, verify=verify)
    trusted = check_names(trusted, call="ms.load", name="trusted", example="['my_models']")
    check_flag(allow_pickle, call="ms.load", name="allow_pickle")
    check_flag(mmap, call="ms.load", name="mmap")
    check_flag(progress, call="ms.load", name="progress")
    with gc_paused(), open_source(path, storage_options=storage_options) as source:
        refuse_pickles(source, allow_pickle)
        total = sum(r.nbytes for r in source.records.values())
        with progress_bar(progress, f"loading {os.path.basename(os.fspath(path))}", total) as on_bytes:
            buffers = source.buffers(lazy=False, mmap=mmap)
            values = materialize(source, buffers, source.records.values(), framework=framework,
                                 map_location=map_location, verify=verify, on_bytes=on_bytes)
        add_aliases(values, source.aliases)
        return decode_tree(source, values, allow_pickle=allow_pickle, trusted=trusted)


def open(path: PathLike, *, storage_options: dict | None = None, framework: str | None = None, verify: bool = True) -> Reader:  # noqa: A001
    """Open a file or checkpoint for lazy reading; use as a context manager.

    >>> import numpy as np, tempfile, os, modelsafe as ms
    >>> p = os.path.join(tempfile.mkdtemp(), "sd.safetensors")
    >>> ms.save({"a": np.zeros(2), "b": np.ones(2)}, p)
    >>> with ms.open(p) as r:
    ...     list(r.keys()), r["b"]
    (['a', 'b'], array([1., 1.]))
    """
    _check_read_arguments(path, storage_options, call="ms.open", framework=framework, verify=verify)
    return Reader(open_source(path, storage_options=storage_options), framework=framework, verify=verify)


def _swapped_hint(other: Any, order: str) -> str:
    """A hint when the argument beside the wrong one is the path: the two look swapped."""
    return f"the arguments look swapped: {order}" if isinstance(other, (str, os.PathLike)) else ""


def _check_read_arguments(path: Any, storage_options: Any, *, call: str, framework: Any, verify: Any) -> None:
    """The checks ``load`` and ``open`` share, made before anything is opened."""
    hint = "it reads a file saved with ms.save (or a checkpoint); an object in memory needs no loading"
    check_path(path, call=f"{call}(path)", hint=hint)
    check_storage_options(storage_options, path, call=call)
    check_flag(verify, call=call, name="verify")
    if framework is not None and framework not in known_frameworks():
        raise InvalidArgumentError(
            f"{call}: framework must be one of {', '.join(known_frameworks())} or None (as saved), not {framework!r}"
        )
