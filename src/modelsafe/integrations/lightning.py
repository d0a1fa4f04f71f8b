"""Lightning: ``Trainer(plugins=[ModelsafeCheckpointIO()])`` makes every checkpoint a modelsafe file.

Every checkpoint ``ModelCheckpoint`` (or ``trainer.save_checkpoint``) writes is an
``ms.save`` file at the same path: no pickle, a checksum on every tensor, written
atomically and durably.  ``trainer.fit(model, ckpt_path=path)`` resumes from it
exactly — model, optimizers, schedulers, loops, callbacks' state and the global
random generators (Python, NumPy, torch), so a resumed run equals an uninterrupted
one.  ``save_top_k`` works as usual: ``remove_checkpoint`` deletes the file.

``ModelsafeCheckpointIO(async_save=True)`` writes in a background thread (as Lightning's
``AsyncCheckpointIO``): tensors are copied before ``save_checkpoint`` returns, an error
of a background write is raised by the next save, load, removal or at teardown.

Checkpoints written by Lightning's default ``torch.save`` still load through the plugin
(modelsafe's allowlist reader: nothing the file names is imported or called), and
``modelsafe convert old.ckpt new.ckpt`` turns them into modelsafe files.

>>> import lightning as L
>>> from modelsafe.integrations.lightning import ModelsafeCheckpointIO
>>> trainer = L.Trainer(plugins=[ModelsafeCheckpointIO()], logger=False)  # doctest: +SKIP
>>> ms.load("checkpoints/epoch=1-step=8.ckpt")["state_dict"].keys()  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import collections
import enum
import os
import pathlib
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Mapping

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import CheckpointIO

import modelsafe as ms
from modelsafe.rng import RNGState

__all__ = ["ModelsafeCheckpointIO", "lower_checkpoint", "RNG_KEY"]

RNG_KEY = "modelsafe_rng"  # the global generators at save time, restored by load_checkpoint


class ModelsafeCheckpointIO(CheckpointIO):
    """A Lightning ``CheckpointIO`` that writes and reads modelsafe files.

    ``async_save``: write in a background thread (one at a time, in order).
    ``rng``: record the global RNG states with each checkpoint and restore them when
    one is loaded (exact resume; ``rng=False`` leaves the generators alone).
    """

    def __init__(self, *, async_save: bool = False, rng: bool = True) -> None:
        self.async_save = async_save
        self.rng = rng
        self._executor: ThreadPoolExecutor | None = None
        self._pending: list[Future] = []
        self._lock = threading.Lock()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(
                f"ModelsafeCheckpointIO does not take storage_options (got {storage_options!r}); "
                "modelsafe files need no save options"
            )
        self._raise_failed()
        state = lower_checkpoint(checkpoint)
        if self.rng:
            state[RNG_KEY] = RNGState.capture()
        path = os.fspath(path)
        get_filesystem(path).makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if not self.async_save:
            ms.save(state, path)
            return
        state = _copy_tensors(state)  # later training steps must not leak into the checkpoint
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="modelsafe-lightning")
        with self._lock:
            self._pending.append(self._executor.submit(ms.save, state, path))

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """The checkpoint dict at ``path`` (a modelsafe file, or a Lightning ``torch.save`` file read without pickle)."""
        self.wait()
        checkpoint = ms.load(os.fspath(path), map_location=map_location)
        rng = checkpoint.pop(RNG_KEY, None) if isinstance(checkpoint, dict) else None
        if self.rng and isinstance(rng, RNGState):
            rng.restore()
        return checkpoint

    def remove_checkpoint(self, path: Any) -> None:
        self.wait()  # never remove a file a background save is still writing
        fs = get_filesystem(path)
        if fs.exists(path):
            fs.rm(path, recursive=True)

    def wait(self) -> None:
        """Wait for background saves; raise the first that failed."""
        with self._lock:
            pending, self._pending = self._pending, []
        errors = [f.exception() for f in pending]
        failed = next((e for e in errors if e is not None), None)
        if failed is not None:
            raise failed

    def _raise_failed(self) -> None:
        with self._lock:
            done = [f for f in self._pending if f.done()]
            self._pending = [f for f in self._pending if not f.done()]
        failed = next((f.exception() for f in done if f.exception() is not None), None)
        if failed is not None:
            raise failed

    def teardown(self) -> None:
        try:
            self.wait()
        finally:
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None


def lower_checkpoint(value: Any) -> Any:
    """A copy of a Lightning checkpoint dict that ``ms.save`` stores without pickle.

    Lightning puts a few values in checkpoints that are not plain data: ``hyper_parameters``
    is an ``AttributeDict`` (a dict subclass), and ``save_hyperparameters`` may capture an
    ``argparse.Namespace``, paths or enums.  They are stored as plain dicts, strings and
    values; anything else ``ms.save`` refuses with an error naming where it is.

    >>> from lightning.fabric.utilities.data import AttributeDict
    >>> lower_checkpoint({"hyper_parameters": AttributeDict(lr=0.1)})
    {'hyper_parameters': {'lr': 0.1}}
    """
    tp = type(value)
    if tp in (dict, collections.OrderedDict):
        return tp((k, lower_checkpoint(v)) for k, v in value.items())
    if tp in (list, tuple):
        return tp(lower_checkpoint(v) for v in value)
    if isinstance(value, Mapping) and not isinstance(value, (collections.Counter, collections.defaultdict)):
        return {k: lower_checkpoint(v) for k, v in value.items()}  # AttributeDict and other dict-likes
    if isinstance(value, argparse.Namespace):
        return {k: lower_checkpoint(v) for k, v in vars(value).items()}
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return lower_checkpoint(value.value)
    return value


def _copy_tensors(value: Any) -> Any:
    """Private copies of every tensor (on the caller's thread, as Lightning's AsyncCheckpointIO does)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if type(value) in (dict, collections.OrderedDict):
        return type(value)((k, _copy_tensors(v)) for k, v in value.items())
    if type(value) in (list, tuple):
        return type(value)(_copy_tensors(v) for v in value)
    return value
