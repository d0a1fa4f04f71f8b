"""Sharded training state (DTensor / FSDP2) through ``torch.distributed.checkpoint``, in modelsafe's format.

Call :func:`save` and :func:`load_into` on every rank, as ``dcp.save`` / ``dcp.load``:
each rank writes its own shards (``rank-NNNNN.safetensors``, a checksum per payload),
rank 0 writes ``manifest.json`` and commits the directory once all ranks are done,
and loading reshards to any world size.  No pickle is written or read.  On one
process ``ms.open(path)`` / ``ms.load(path)`` read the result as whole tensors.

>>> import modelsafe as ms
>>> ms.distributed.save          # doctest: +ELLIPSIS
<function save at ...>

Importing this imports no framework; torch is imported by the first save or load.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

from ..errors import ModelsafeError
from . import source as _source  # registers the directory layout with ms.open / ms.load  # noqa: F401

__all__ = ["save", "load_into", "PendingDistributedSave"]

_ASYNC_GROUP: list = []  # one gloo group for background saves, made on first use by every rank


def save(state: Any, path: str | os.PathLike, *, async_save: bool = False, process_group: Any = None,
         storage_options: dict | None = None) -> Any:
    """Save sharded ``state`` (a dict of state dicts or Stateful objects, as for ``dcp.save``) to directory ``path``.

    Called on every rank.  ``path`` may be an fsspec URL (``s3://bucket/run/ckpt``, with
    ``storage_options`` or the AWS_* environment): every rank uploads its own rank file,
    and the manifest, uploaded last, commits the checkpoint.  Returns None, or with ``async_save=True`` a
    :class:`PendingDistributedSave` once the state is copied to CPU; its ``wait()``
    returns when the checkpoint is committed and re-raises a failed save.

    >>> # on every rank, e.g. under torchrun, with model = fully_shard(...):
    >>> # from torch.distributed.checkpoint.state_dict import get_state_dict
    >>> # msd, osd = get_state_dict(model, optimizer)
    >>> # ms.distributed.save({"model": msd, "optim": osd}, "ckpt/step100")
    """
    import torch.distributed.checkpoint as dcp

    from .storage import JsonSavePlanner, ModelsafeWriter

    writer = ModelsafeWriter(path, storage_options=storage_options)
    if async_save:
        return _save_in_background(state, writer, os.fspath(path), process_group or _async_group())
    try:
        with _unwrapped():
            dcp.save(state, storage_writer=writer, planner=JsonSavePlanner(), process_group=process_group,
                     no_dist=_single())
    finally:
        writer.close()
    return None


def load_into(state: Any, path: str | os.PathLike, *, process_group: Any = None,
              storage_options: dict | None = None) -> None:
    """Load checkpoint ``path`` into sharded ``state`` in place (as ``dcp.load``), resharding as needed.

    Called on every rank, with the state laid out for this run's world size, which
    may differ from the one that saved.  Every chunk read is verified; a damaged one
    raises CorruptCheckpointError naming the rank file and the tensor.  ``path`` may be
    a URL (``s3://bucket/ckpt``, with ``storage_options``): each rank then reads the
    manifest, the rank files' headers and the byte ranges of the chunks it needs.
    """
    import torch.distributed.checkpoint as dcp

    from .storage import JsonLoadPlanner, ModelsafeReader

    reader = ModelsafeReader(path, storage_options=storage_options)
    try:
        reader.source()  # the manifest checked here, on every rank: DCP would flatten a failure into a string
        with _unwrapped():
            dcp.load(state, storage_reader=reader, planner=JsonLoadPlanner(source_path=os.fspath(path)),
                     process_group=process_group, no_dist=_single())
    finally:
        reader.close()


class PendingDistributedSave:
    """A background ``ms.distributed.save``: ``wait()`` blocks until it is committed, re-raising its error."""

    def __init__(self, pending: Any, path: str) -> None:
        self._pending = pending  # the PendingSave of its background writer
        self.path = path

    def done(self) -> bool:
        return self._pending.done()

    def wait(self, timeout: float | None = None) -> None:
        self._pending.result(timeout)

    def __repr__(self) -> str:
        return f"<PendingDistributedSave {self.path!r} {'done' if self.done() else 'running'}>"


_BACKGROUND: list = []  # the writer thread of ms.distributed.save(async_save=True), made on first use


def _save_in_background(state: Any, writer: Any, path: str, group: Any) -> PendingDistributedSave:
    """Copy ``state`` to CPU now; write it with DCP on the background writer thread (see :mod:`.background`)."""
    import torch.distributed.checkpoint as dcp

    from ..async_save import BackgroundWriter
    from .background import staged, submit
    from .storage import JsonSavePlanner

    try:
        copy = staged(state)
    except BaseException:
        writer.close()
        raise

    def job() -> None:
        try:
            with _unwrapped(quiet=False):
                dcp.save(copy, storage_writer=writer, planner=JsonSavePlanner(), process_group=group, no_dist=_single())
        finally:
            writer.close()  # the run lock is released even if nobody waits

    if not _BACKGROUND:
        _BACKGROUND.append(BackgroundWriter("distributed"))
    return PendingDistributedSave(submit(_BACKGROUND[0], os.path.basename(path), 0, job), path)


def _single() -> bool:
    """True in a process without an initialized process group (DCP then saves as world size 1)."""
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized())


def _async_group() -> Any:
    """A gloo group of all ranks for background saves: their collectives must not interleave with training's."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return None
    if not _ASYNC_GROUP:
        _ASYNC_GROUP.append(dist.new_group(backend="gloo"))
    return _ASYNC_GROUP[0]


class _unwrapped:
    """Re-raise a modelsafe error that DCP wrapped in its CheckpointException (one per failed rank) as itself.

    Also silences DCP's warning that it "assumes the intent" of a single process: one
    process without a process group is a supported way to call save and load_into.
    ``quiet=False`` leaves the warning filters alone (``catch_warnings`` is not
    thread-safe: a background thread must not use it).
    """

    def __init__(self, *, quiet: bool = True) -> None:
        self._warnings = warnings.catch_warnings() if quiet else None

    def __enter__(self) -> None:
        if self._warnings is not None:
            self._warnings.__enter__()
            warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        return None

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if self._warnings is not None:
            self._warnings.__exit__(kind, exc, tb)
        failures = getattr(exc, "failures", None)
        if isinstance(failures, dict):
            for wrapped in failures.values():
                inner = wrapped[0] if isinstance(wrapped, tuple) else wrapped  # (exception, stack summary)
                if isinstance(inner, ModelsafeError):
                    raise inner from exc
        return False
