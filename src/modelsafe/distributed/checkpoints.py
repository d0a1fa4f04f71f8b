"""``Checkpoints.save(state, distributed=True)``: a run of sharded checkpoints.

Every rank calls it with the same arguments.  Rank 0 is the run's only writer: it
takes the run lock, names the checkpoint, stages it, commits it once every rank has
written (through :class:`.storage.ModelsafeWriter` with the run's own storage) and
applies retention.  The other ranks only write their shards: DCP's plan tells them
where.  Rank 0's verdict on the arguments (a name already taken, say) is broadcast
first, so a refused save raises on every rank instead of leaving them waiting.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from ..checkpoints import _checked_step, _metrics_to_json
from ..errors import InvalidArgumentError, ModelsafeError

__all__ = ["save_sharded"]


def save_sharded(ck: Any, state: Any, *, step: int | None, metrics: dict | None, metadata: dict | None = None) -> Any:
    """Save sharded ``state`` as the next checkpoint of run ``ck``; returns its CheckpointInfo on rank 0, else None."""
    if metadata is not None:
        raise InvalidArgumentError(
            f"{ck.directory}: ck.save(..., distributed=True) takes no metadata= yet; put plain values in the state "
            "dict instead", path=str(ck.directory), key="metadata",
        )
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    from . import _single, _unwrapped
    from .storage import JsonSavePlanner, ModelsafeWriter

    metrics = ck._checked_metrics(metrics)  # the same check on every rank
    step = _checked_step(step)
    rank = 0 if _single() else dist.get_rank()
    writer, verdict = None, None
    if rank == 0:
        try:
            writer, name = _prepare(ck, step, metrics)
        except Exception as exc:  # told to every rank below, then raised here
            verdict = exc
    if not _single():
        shared = [None if verdict is None else f"{type(verdict).__name__}: {verdict}"]
        dist.broadcast_object_list(shared, src=0)
        if shared[0] is not None and verdict is None:
            raise ModelsafeError(f"{ck.directory}: rank 0 refused the save: {shared[0]}", path=str(ck.directory))
    if verdict is not None:
        raise verdict
    if writer is None:
        # not the coordinator: the plan names the staging directory (or the upload prefix)
        writer = ModelsafeWriter(ck.directory, storage_options=ck.storage_options)
    try:
        with _unwrapped():
            dcp.save(state, storage_writer=writer, planner=JsonSavePlanner(), no_dist=_single())
    finally:
        writer.close()
    if rank != 0:
        return None
    info = ck._read_back(name, writer.committed)
    ck._prune()
    return info


def _prepare(ck: Any, step: int | None, metrics: dict) -> tuple[Any, str]:
    """Rank 0: become the run's writer, name the checkpoint, and make its writer (as ``Checkpoints.save`` does)."""
    from .storage import ModelsafeWriter

    run, _, step, name = ck._claim(step, metrics)
    checkpoint = {
        "name": name, "step": step, "time": datetime.now(timezone.utc).isoformat(),
        "metrics": _metrics_to_json(metrics), "run_id": run["run_id"], "lineage": run.get("lineage", []),
    }
    writer = ModelsafeWriter(ck._storage.path(name), storage=ck._storage, checkpoint=checkpoint,
                             storage_options=ck.storage_options)
    return writer, name
