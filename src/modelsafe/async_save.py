"""Background checkpoint writes: snapshot in the caller, write in a thread, never lose an error.

:func:`snapshot` copies every payload of a flattened state to host memory, so the
caller may change its tensors as soon as ``save`` returns.  :class:`BackgroundWriter`
runs one write at a time in a worker thread and hands back a :class:`PendingSave`.
A failed write is re-raised by ``PendingSave.result()``, by ``wait()`` and by the next
``submit()``; writes still running at interpreter exit are finished first.
"""

from __future__ import annotations

import atexit
import collections
import copy as copy_module
import sys
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable

import numpy as np

from .adapters import framework_for_type
from .format.plan import FlatState, Payload
from .gc_pause import gc_paused

__all__ = ["snapshot", "copy_plain_tree", "PendingSave", "BackgroundWriter"]


class _NotPlain(Exception):
    """The tree holds something the fast copy does not handle (then flatten + snapshot)."""


def _same(obj: Any, memo: dict) -> Any:
    return obj


def _copy_dict(obj: dict, memo: dict) -> dict:
    out = type(obj)()
    for k, v in obj.items():
        if type(k) is not str and type(k) is not int:
            raise _NotPlain
        tp = type(v)
        out[k] = (_COPIERS.get(tp) or _copier(tp))(v, memo)
    meta = getattr(obj, "_metadata", None)  # state_dict version info some frameworks attach
    if meta is not None:
        out._metadata = copy_module.deepcopy(meta)
    return out


def _copy_list(obj: list, memo: dict) -> list:
    return [(_COPIERS.get(type(v)) or _copier(type(v)))(v, memo) for v in obj]


def _copy_tuple(obj: tuple, memo: dict) -> tuple:
    return tuple(_copy_list(list(obj), memo))


def _not_plain(obj: Any, memo: dict) -> Any:
    raise _NotPlain


# exact type -> copier; tensor types are added on first sight, from their Framework's snapshot
# (no framework is imported here)
_COPIERS: dict[type, Callable[[Any, dict], Any]] = {
    **{tp: _same for tp in (type(None), bool, int, float, str, bytes)},
    dict: _copy_dict, collections.OrderedDict: _copy_dict, list: _copy_list, tuple: _copy_tuple,
}


def _copier(tp: type) -> Callable[[Any, dict], Any]:
    found: Callable[[Any, dict], Any] = _not_plain
    framework = framework_for_type(tp)
    if framework is not None and framework.snapshot is not None and framework.tensors.handles(tp):
        found = _framework_copier(framework.snapshot)
    _COPIERS[tp] = found
    return found


def _framework_copier(snapshot: Callable[[Any, dict], Any]) -> Callable[[Any, dict], Any]:
    def copy(obj: Any, memo: dict) -> Any:
        out = snapshot(obj, memo)
        if out is None:  # the framework's general path (GPU, quantized, subclasses): flatten + snapshot
            raise _NotPlain
        return out

    return copy


def copy_plain_tree(obj: Any) -> Any | None:
    """A private copy of a tree of dicts, lists, tuples, scalars and CPU tensors; None otherwise.

    The cheap snapshot for the common checkpoint (``{"model": model.state_dict(),
    "optimizer": opt.state_dict(), "epoch": 3}``): one copy per tensor and nothing else,
    so flattening can happen in the background.  Trees with other objects (modules,
    optimizers, GPU tensors, ...) return None: flatten them, then :func:`snapshot`.
    """
    try:
        with gc_paused():
            return (_COPIERS.get(type(obj)) or _copier(type(obj)))(obj, {})
    except (_NotPlain, RecursionError):
        return None


def snapshot(state: FlatState) -> FlatState:
    """A copy of flattened ``state`` whose payloads own host copies of their bytes.

    >>> import numpy as np
    >>> from modelsafe.tree import flatten
    >>> a = np.zeros(2, np.float32)
    >>> copy = snapshot(flatten({"a": a}))
    >>> a += 1
    >>> bytes(copy.payloads[0].host_bytes()) == bytes(8)
    True
    """
    return replace(state, payloads=tuple(_own_copy(p) for p in state.payloads))


def _own_copy(payload: Payload) -> Payload:
    if payload.kind != "tensor":  # bytes and pickles: already private, immutable copies
        return payload
    data = payload.host_bytes()
    copy = np.empty(data.nbytes, dtype=np.uint8)
    if data.nbytes:
        copy[:] = np.frombuffer(data, dtype=np.uint8)
    return payload.holding(copy)


class PendingSave:
    """Handle of a save running in the background (like a future).

    ``done()`` says whether it finished; ``result(timeout=None)`` waits and returns the
    CheckpointInfo or raises the error of the write; ``wait()`` is ``result()``.
    """

    def __init__(self, name: str, step: int, future: Future, on_report: Callable[["PendingSave"], None]) -> None:
        self.name = name
        self.step = step
        self._future = future
        self._on_report = on_report

    def done(self) -> bool:
        return self._future.done()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self._future.exception(timeout)

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._future.result(timeout)
        except BaseException:
            if self._future.done():
                self._on_report(self)
            raise

    wait = result

    def __repr__(self) -> str:
        state = "done" if self.done() else "running"
        return f"<PendingSave {self.name!r} step={self.step} {state}>"


_live: "weakref.WeakSet[BackgroundWriter]" = weakref.WeakSet()


class BackgroundWriter:
    """Runs write jobs one at a time in a background thread."""

    def __init__(self, label: str) -> None:
        self.label = label
        self._current: PendingSave | None = None
        self._unreported: list[PendingSave] = []
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None
        _live.add(self)

    def _reported(self, pending: PendingSave) -> None:
        with self._lock:
            if pending in self._unreported:
                self._unreported.remove(pending)

    def wait(self) -> Any:
        """Wait for the running write; re-raise the first failure not yet reported."""
        current = self._current
        if current is not None:
            current._future.exception()  # waits, never raises
        with self._lock:
            failed = self._unreported[:1]
            del self._unreported[:1]
        if failed:
            raise failed[0]._future.exception()
        if current is None or current._future.exception() is not None:
            return None
        return current._future.result()

    def submit(self, name: str, step: int, job: Callable[[], Any]) -> PendingSave:
        """Run ``job`` in the background after the previous one; returns its handle."""
        future: Future = Future()
        pending = PendingSave(name, step, future, self._reported)

        def run() -> None:
            if not future.set_running_or_notify_cancel():  # pragma: no cover
                return
            try:
                result = job()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, never swallowed
                with self._lock:
                    self._unreported.append(pending)
                future.set_exception(exc)
            else:
                future.set_result(result)

        if self._executor is None:
            # one long-lived worker (no thread start per save); concurrent.futures joins it
            # at interpreter exit after it has run everything queued
            self._executor = ThreadPoolExecutor(1, thread_name_prefix=f"modelsafe-save-{self.label}")
        self._current = pending
        self._executor.submit(run)
        return pending

    def shutdown(self) -> None:
        """Finish queued work and stop the worker thread."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)

    @property
    def busy(self) -> bool:
        return self._current is not None and not self._current.done()


@atexit.register
def _finish_pending_at_exit() -> None:
    """Wait for pending saves (threads are joined already) and report failures nobody saw."""
    for writer in list(_live):
        try:
            writer.wait()
        except BaseException as exc:  # noqa: BLE001
            print(f"modelsafe: a background checkpoint save failed: {exc}", file=sys.stderr)
