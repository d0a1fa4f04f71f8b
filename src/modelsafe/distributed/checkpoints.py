"""``Checkpoints.save(state, distributed=True)``: a run of sharded checkpoints, in the foreground or the background.

Every rank calls it with the same arguments.  Rank 0 is the run's only writer: it
takes the run lock, names the checkpoint, stages it, commits it once every rank has
written (through :class:`.storage.ModelsafeWriter` with the run's own storage) and
applies retention.  The other ranks only write their shards: DCP's plan tells them
where.  The ranks agree before anything is written: each one's verdict (rank 0's on
the arguments, a name already taken say; any rank's failed earlier save or copy) is
gathered, so a refused save raises on every rank instead of leaving them waiting.

With ``Checkpoints(..., async_save=True)`` a save first waits for the previous one
(one in flight per run), copies the state to CPU memory, agrees, and hands the
write, the commit and retention to the run's
:class:`~modelsafe.async_save.BackgroundWriter` (through :mod:`.background`); it
returns a :class:`~modelsafe.async_save.PendingSave`.  The agreement runs in the
caller's thread, on the default group, in training's order; the background DCP save
on the gloo group for background saves.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Callable

from ..checkpoints import _checked_step, _metrics_to_json
from ..errors import InvalidArgumentError, ModelsafeError
from .background import staged, submit

__all__ = ["save_sharded"]


def save_sharded(ck: Any, state: Any, *, step: int | None, metrics: dict | None, metadata: dict | None = None) -> Any:
    """Save sharded ``state`` as the next checkpoint of run ``ck`` (every rank calls it).

    Returns its CheckpointInfo on rank 0 and None on the others; with ``async_save`` a
    PendingSave on every rank (its result: the same).
    """
    _check_arguments(ck, state, metadata)
    metrics = ck._checked_metrics(metrics)  # the same check on every rank
    step = _checked_step(step)
    from . import _async_group

    background = ck._writer is not None
    group = _async_group() if background else None  # made here, by every rank in training's order
    failure, copy = _waited_and_staged(ck, state) if background else (None, state)
    rank = _rank()
    writer, name = None, None
    if rank == 0 and failure is None:
        try:
            writer, name, step = _prepare(ck, step, metrics)
        except Exception as exc:  # told to every rank below, then raised here
            failure = exc
    try:
        name, step = _agree(ck, failure, name, step)
    except BaseException:
        if writer is not None:
            writer.close()
        raise
    job = _job(ck, copy, writer, name, group, quiet=not background)
    if not background:
        return job()
    return submit(ck._writer, name, step, job)


def _check_arguments(ck: Any, state: Any, metadata: dict | None) -> None:
    if metadata is not None:
        raise InvalidArgumentError(
            f"{ck.directory}: ck.save(..., distributed=True) takes no metadata= yet; put plain values in the state "
            "dict instead", path=str(ck.directory), key="metadata",
        )
    if not isinstance(state, dict):
        raise InvalidArgumentError(
            f"{ck.directory}: ck.save(..., distributed=True) takes a dict of state dicts or Stateful objects (as "
            f"dcp.save), not {type(state).__name__}", path=str(ck.directory), key="state",
        )


def _rank() -> int:
    from . import _single

    if _single():
        return 0
    import torch.distributed as dist

    return dist.get_rank()


def _waited_and_staged(ck: Any, state: dict) -> tuple[BaseException | None, Any]:
    """Wait for the run's previous save, then copy ``state`` to CPU memory; a failure of either is returned.

    The copy is what the background write reads, so the caller may change its tensors
    as soon as ``save`` returns.  Failures are returned, not raised: every rank must
    still take part in the agreement, or the others would wait for it forever.
    """
    try:
        ck._writer.wait()  # one save in flight at a time; re-raises a failed one
        return None, staged(state)
    except Exception as exc:  # noqa: BLE001 - raised on every rank by _agree
        return exc, None


def _agree(ck: Any, failure: BaseException | None, name: str | None, step: int | None) -> tuple[str, int]:
    """Every rank's verdict to every rank: raise if any refused, else rank 0's checkpoint name and step.

    On the default group, in the caller's thread: the background group may be busy
    with another run's save.
    """
    from . import _single

    if _single():
        if failure is not None:
            raise failure
        return name, step
    import torch.distributed as dist

    mine = (None if failure is None else f"{type(failure).__name__}: {failure}", name, step)
    verdicts: list = [None] * dist.get_world_size()
    dist.all_gather_object(verdicts, mine)
    if failure is not None:
        raise failure
    for rank, (refusal, _, _) in enumerate(verdicts):
        if refusal is not None:
            raise ModelsafeError(f"{ck.directory}: rank {rank} refused the save: {refusal}", path=str(ck.directory))
    return verdicts[0][1], verdicts[0][2]


def _job(ck: Any, state: Any, writer: Any, name: str, group: Any, *, quiet: bool) -> Callable[[], Any]:
    """The DCP save of ``state`` and, on rank 0, the commit's read-back and retention; run now or in the background."""
    import torch.distributed.checkpoint as dcp

    from . import _single, _unwrapped
    from .storage import JsonSavePlanner, ModelsafeWriter

    coordinator = writer is not None
    if writer is None:
        # not the coordinator: the plan names the staging directory (or the upload prefix)
        writer = ModelsafeWriter(ck.directory, storage_options=ck.storage_options)

    def job() -> Any:
        try:
            with _unwrapped(quiet=quiet):
                dcp.save(state, storage_writer=writer, planner=JsonSavePlanner(), process_group=group,
                         no_dist=_single())
        finally:
            writer.close()
        if not coordinator:
            return None
        info = ck._read_back(name, writer.committed)
        ck._prune()
        return info

    return job


def _prepare(ck: Any, step: int | None, metrics: dict) -> tuple[Any, str, int]:
    """Rank 0: become the run's writer, name the checkpoint, and make its writer (as ``Checkpoints.save`` does)."""
    from .storage import ModelsafeWriter

    run, _, step, name = ck._claim(step, metrics)
    checkpoint = {
        "name": name, "step": step, "time": datetime.now(timezone.utc).isoformat(),
        "metrics": _metrics_to_json(metrics), "run_id": run["run_id"], "lineage": run.get("lineage", []),
    }
    writer = ModelsafeWriter(ck._storage.path(name), storage=ck._storage, checkpoint=checkpoint,
                             storage_options=ck.storage_options)
    return writer, name, step
