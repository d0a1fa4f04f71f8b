"""Turn a Source's records and byte buffers into objects: verify, group, materialize."""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Iterable

import numpy as np

from .adapters import LoadOptions, TensorSpec, adapter_for_type, adapter_named
from .errors import CorruptCheckpointError, ModelsafeError, UnsafeObjectError, UnsupportedFormatError, UnsupportedObjectError
from .format.manifest import TensorRecord, check_views
from .gc_pause import gc_paused
from .tree import Unflattener


def refuse_pickles(source: Any, allow_pickle: bool) -> None:
    """Raise UnsafeObjectError before reading any bytes if the file holds pickles."""
    if allow_pickle:
        return
    for record in source.records.values():
        if record.kind == "pickle":
            raise UnsafeObjectError(
                f"{source.path}: holds pickled objects (first: tensor {record.name!r}); unpickling can run code, "
                "so loading is refused. Pass allow_pickle=True only if you trust this file",
                path=source.path, key=record.name,
            )


@gc_paused()  # tens of thousands of tensors and specs at once
def buffers_on_demand(source: Any) -> dict[str | None, np.ndarray]:
    """The buffers to read records of ``source`` from: mapped, or for a source read on demand
    (byte ranges of an object) its sparse buffers, which :func:`fetch_records` fills."""
    sparse = getattr(source, "sparse_buffers", None)
    return sparse() if sparse is not None else source.buffers(lazy=True)


def fetch_records(source: Any, records: Iterable[TensorRecord]) -> None:
    """Bring the bytes of ``records`` in where ``source`` reads on demand; nothing for a mapped one."""
    fetch = getattr(source, "fetch", None)
    if fetch is not None:
        fetch(records)


def materialize(
    source: Any,
    buffers: dict[str | None, np.ndarray],
    records: Iterable[TensorRecord],
    *,
    framework: str | None = None,
    map_location: Any = None,
    verify: bool = True,
    copy: bool = False,
    on_bytes: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """name -> object for ``records``; tensors come from each framework adapter in one batch.

    ``on_bytes`` hears of each record's bytes once they are verified (progress bars).
    """
    values: dict[str, Any] = {}
    groups: dict[tuple, list[TensorRecord]] = defaultdict(list)
    for record in records:
        base = buffers[record.file]
        if verify:
            source.verify_record(record, base)
        if on_bytes is not None:
            on_bytes(record.nbytes)
        if record.kind == "tensor":
            if not record.dtype.supported:
                raise unsupported_dtype(source, record)
            groups[(record.file, framework or record.framework)].append(record)
        else:
            values[record.name] = base[record.begin : record.end].tobytes()
    options = LoadOptions(map_location=map_location, copy=copy)
    for (file, framework_name), group in groups.items():
        adapter = adapter_named(framework_name)
        _check_dtypes(source, adapter, group)
        specs = [TensorSpec(r.begin, r.nbytes, r.dtype.name, r.shape, r.attrs, r.name) for r in group]
        try:
            tensors = adapter.from_buffer(buffers[file], specs, options)
        except ModelsafeError as exc:
            if exc.path is not None:
                raise
            raise type(exc)(f"{source.path}: {exc.message}", path=source.path, key=exc.key) from exc
        for record, value in zip(group, tensors):
            values[record.name] = value
    share_views(source, values)
    return values


def _check_dtypes(source: Any, adapter: Any, group: list[TensorRecord]) -> None:
    """A tensor whose dtype the target framework lacks is an error naming the tensor and the dtype."""
    supports = getattr(adapter, "supports_dtype", None)  # optional: adapters that hold every dtype omit it
    if supports is None:
        return
    for record in group:
        if not supports(record.dtype.name):
            raise UnsupportedObjectError(
                f"{source.path}: tensor {record.name!r} is {record.dtype.name}, which {adapter.framework} has no dtype "
                "for; load the file with framework='numpy' (or a framework that has it) and convert the tensor",
                path=source.path, key=record.name,
            )


def share_views(source: Any, values: dict[str, Any]) -> None:
    """Rebuild each recorded view whose base is in ``values`` as a view of it (shared memory, as saved).

    The view's own stored bytes must equal what it reads from the base, so a damaged
    or hostile ``views`` entry can never hand a key other bytes than its checksum covers.
    """
    views = getattr(source, "views", None)
    if views is None:
        views = check_views(source.manifest.get("views"), source.records, source.path)
    for name, (base, offset, strides) in views.items():
        stored, of = values.get(name), values.get(base)
        if stored is None or of is None or type(stored) is not type(of):
            continue
        adapter = adapter_for_type(type(of))
        view_of = getattr(adapter, "view_of", None)
        if view_of is None:
            continue
        view = view_of(of, offset, tuple(source.records[name].shape), strides)
        if not np.array_equal(_bytes_of(adapter, view), _bytes_of(adapter, stored)):
            raise CorruptCheckpointError(
                f"{source.path}: tensor {name!r} is recorded as a view of {base!r}, but its stored bytes differ from "
                "what that view reads; the manifest is damaged. Restore the file from a backup or save it again",
                path=source.path, key=name,
            )
        values[name] = view


def _bytes_of(adapter: Any, tensor: Any) -> np.ndarray:
    return np.frombuffer(adapter.host_bytes(tensor), dtype=np.uint8)


def unsupported_dtype(source: Any, record: TensorRecord) -> UnsupportedFormatError:
    """The error for a tensor whose safetensors dtype code no framework here represents."""
    return UnsupportedFormatError(
        f"unsupported dtype {record.dtype.storage} (shape {list(record.shape)}) in tensor {record.name!r} of "
        f"{source.path}: no torch or numpy dtype holds it. The file is valid; read the other tensors with "
        "ms.open, or load it with a tool that knows this dtype",
        path=source.path, key=record.name,
    )


def add_aliases(values: dict[str, Any], aliases: dict[str, str]) -> dict[str, Any]:
    for alias, target in aliases.items():
        if target in values:
            values[alias] = values[target]
    return values


def _too_deep(source: Any, what: str) -> CorruptCheckpointError:
    return CorruptCheckpointError(
        f"{source.path}: the manifest {what} is nested too deeply to decode; the file is damaged or hostile",
        path=source.path,
    )


@gc_paused()
def decode_tree(source: Any, values: dict[str, Any], *, allow_pickle: bool, trusted: Iterable[str] = ()) -> Any:
    try:
        return Unflattener(values, allow_pickle=allow_pickle, trusted=tuple(trusted), source=source.path).decode(
            source.manifest.get("tree")
        )
    except RecursionError:
        raise _too_deep(source, "tree") from None


def decode_metadata(source: Any) -> Any:
    node = source.manifest.get("metadata")
    if node is None:
        return {}
    try:
        return Unflattener({}, source=source.path).decode(node)
    except RecursionError:
        raise _too_deep(source, "metadata") from None
