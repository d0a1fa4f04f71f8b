"""Background sharded saves: a CPU copy of the state, then ``dcp.save`` of it in a writer thread.

Used by ``ms.distributed.save(..., async_save=True)`` and by ``Checkpoints(...,
async_save=True).save(..., distributed=True)``: the copy is made in the caller's thread
(:func:`staged`), the save runs on a :class:`~modelsafe.async_save.BackgroundWriter`
(:func:`submit`), over the gloo group made for background saves (``_async_group``), so
its collectives never interleave with training's.  Background saves take that group
one at a time, in the order they were started, the same on every rank.
"""

from __future__ import annotations

import collections
import copy as copy_module
import threading
import warnings
from typing import Any, Callable

__all__ = ["staged", "submit"]


def staged(state: dict) -> dict:
    """A CPU copy of ``state`` (as ``dcp.async_save`` stages it): new containers, every tensor copied to CPU.

    Stateful entries give their ``state_dict()`` first, as in ``dcp.save``.  Tensors
    (DTensors too: the copy keeps their mesh and placements) are copied with
    ``.to("cpu", copy=True)``: on the bench's FSDP2 state (2 ranks, 384 MiB) that took
    0.11-0.15 s, about a plain ``clone()``, where DCP's ``DefaultStager`` took 0.35-0.47 s.
    Other leaves are deep-copied (numbers and strings are shared: they cannot change).
    """
    from torch.distributed.checkpoint.stateful import Stateful

    return {k: _copied(v.state_dict() if isinstance(v, Stateful) else v) for k, v in state.items()}


def _copied(node: Any) -> Any:
    import torch

    if isinstance(node, dict):
        out: dict = collections.OrderedDict() if isinstance(node, collections.OrderedDict) else {}
        for key, value in node.items():
            out[key] = _copied(value)
        return out
    if type(node) in (list, tuple):
        return type(node)(_copied(value) for value in node)
    if isinstance(node, torch.Tensor):
        copy = node.detach().to("cpu", copy=True)
        return copy.requires_grad_() if node.requires_grad else copy  # DCP records requires_grad
    if type(node) in (type(None), bool, int, float, str, bytes):
        return node
    return copy_module.deepcopy(node)


class _Turns:
    """Background sharded saves take the background group one at a time, in the order they were started.

    Each run has its own writer thread; two runs' saves in flight at once would put
    their collectives on the one group in whatever order the threads get there, which
    may differ between ranks (a hang).  Tickets are drawn in the caller's thread, where
    every rank starts the saves in the same order.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._drawn = 0
        self._serving = 0

    def draw(self) -> int:
        with self._changed:
            self._drawn += 1
            return self._drawn - 1

    def run(self, ticket: int, job: Callable[[], Any]) -> Any:
        with self._changed:
            self._changed.wait_for(lambda: self._serving == ticket)
        try:
            return job()
        finally:
            with self._changed:
                self._serving += 1
                self._changed.notify_all()


_TURNS = _Turns()


def submit(writer: Any, name: str, step: int, job: Callable[[], Any]) -> Any:
    """Run ``job`` (a DCP save on the background group) on ``writer`` in its turn; returns the PendingSave."""
    from . import _single

    if _single():
        _quiet_single_process()
    ticket = _TURNS.draw()
    return writer.submit(name, step, lambda: _TURNS.run(ticket, job))


def _quiet_single_process() -> None:
    """Silence DCP's "assuming the intent is to save in a single process" for background saves without a group.

    One process without a process group is a supported way to save.  In the foreground
    ``_unwrapped`` silences it for the call; ``warnings.catch_warnings`` is not
    thread-safe, so a background save relies on this narrow filter (added again on each
    save: test runners reset filters; adding it again replaces it, never duplicates it).
    """
    warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning,
                            module=r"torch\.distributed\.checkpoint")
